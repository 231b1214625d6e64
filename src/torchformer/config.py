"""Typed configuration: dataclasses are the schema, YAML files are saved instances.

A config is a (possibly nested) dataclass. :func:`load_config` builds one from a
YAML file and then applies dotted overrides; every value is coerced to the
field's declared type, and every mistake (unknown key, wrong type, missing
required field) is a :class:`ConfigError` that names the dotted key, where the
value came from (the file or the override) and what was expected.

    @dataclass
    class TrainConfig:
        lr: float = 3e-5
        fp16: bool = False

    @dataclass
    class RunConfig:
        train: TrainConfig = field(default_factory=TrainConfig)

    cfg = load_config(RunConfig, "run.yaml", ["--train.lr", "1e-4", "--train.fp16"])
    save_config(cfg, "runs/x/config.yaml")  # load_config reads it back equal

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Path``,
``Literal[...]``, ``Enum`` subclasses, ``X | None``, unions, ``list[X]``,
``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``, ``Any`` and nested
dataclasses. This module imports no torch so that the CLI starts fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import os
import tempfile
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ConfigError",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "save_config",
]

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


class ConfigError(ValueError):
    """A config value or key is invalid.

    Attributes:
        key: the dotted key at fault (``"train.lr"``), or ``None`` for file-level errors.
        source: where the value came from: a file path, ``"override --train.lr"``,
            or ``None``.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.key = key
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


@dataclass(frozen=True)
class _CliText:
    """A value written as text on the command line; ``text=None`` is a bare flag."""

    text: str | None


@dataclass
class _Context:
    """Where values came from, so that errors can name the file or the override."""

    file: str | None
    overrides: dict[str, str] = field(default_factory=dict)  # dotted key -> "override --k"

    def source(self, key: str) -> str | None:
        parts = key.split(".")
        for i in range(len(parts), 0, -1):  # the longest overridden prefix wins
            hit = self.overrides.get(".".join(parts[:i]))
            if hit is not None:
                return hit
        return self.file


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> T:
    """Build a ``cls`` instance from a YAML file and dotted overrides.

    Args:
        cls: the (top-level) config dataclass.
        path: a YAML file holding a mapping; ``None`` starts from the defaults.
        overrides: command-line tokens (``["--train.lr", "3e-5", "--data.max_length=256",
            "--train.fp16"]``; a bare flag means ``true``) parsed from text, or a mapping
            of dotted keys to already-typed values (``{"train.lr": 3e-5}``).

    Text forms of override values: bools ``true/false/yes/no/on/off/1/0``; ``none``,
    ``null`` or ``~`` for an optional field; lists and tuples ``a,b,c`` or ``[a, b]``;
    mappings ``{k: v}``; literals and enums by their value.

    Returns:
        The config instance; fields absent from both sources keep their defaults
        (a nested section keeps its own default values for the keys not given).

    Raises:
        ConfigError: unreadable YAML, unknown key, wrong type or missing required key;
            the message names the dotted key and the file or override it came from.
    """
    source = str(path) if path is not None else None
    data = read_yaml(Path(path)) if path is not None else {}
    ctx = _Context(file=source)
    if overrides:
        items: list[tuple[str, Any]]
        if isinstance(overrides, Mapping):
            items = list(overrides.items())
        else:
            items = [(k, _CliText(v)) for k, v in parse_overrides(overrides)]
        for key, value in items:
            ctx.overrides[key] = f"override --{key}"
            _set_dotted(data, cls, key, value, ctx)
    return _build(cls, data, "", ctx, base=None)


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, source: str | None = None) -> T:
    """Build a ``cls`` instance from a nested mapping (e.g. a parsed ``config.yaml``).

    Values are checked like YAML values: types must match (a float field also accepts
    a numeric string such as ``"3e-5"``, which YAML 1.1 reads as text).
    """
    return _build(cls, data, "", _Context(file=source), base=None)


def config_to_dict(obj: Any) -> Any:
    """Convert a config dataclass (recursively) to YAML/JSON-safe builtins.

    Paths become strings, enums their values, tuples lists. Only ``init`` fields are
    kept, so that the result loads back with :func:`config_from_dict`.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
    if isinstance(obj, Mapping):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return config_to_dict(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def save_config(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as YAML that :func:`load_config` reads back to an equal object.

    The file is written to a temporary name and renamed, so a crash never leaves a
    half-written config. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(obj), sort_keys=False, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, str | None]]:
    """Split command-line tokens into ``(dotted_key, text)`` pairs.

    Accepts ``--key value``, ``--key=value`` and ``key=value``; a ``--key`` followed by
    another ``--key`` (or nothing) is a bare flag and yields ``text=None`` (``true``
    for a bool field). Values that start with a single dash (``-1``) are values.

    Raises:
        ConfigError: a token that is neither a key nor the value of one.
    """
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--") or "=" in token:
            body = token[2:] if token.startswith("--") else token
            if "=" in body:
                key, text = body.split("=", 1)
                i += 1
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                key, text = body, tokens[i + 1]
                i += 2
            else:
                key, text = body, None
                i += 1
            if not key or any(not part for part in key.split(".")):
                raise ConfigError(f"malformed override key in {token!r}", source="overrides")
            pairs.append((key, text))
        else:
            raise ConfigError(
                f"expected an override like --section.key VALUE, got {token!r}",
                source="overrides",
            )
    return pairs


# ---------------------------------------------------------------------------
# Reading and merging
# ---------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping a YAML config file holds (``{}`` for an empty file).

    Raises:
        ConfigError: unreadable, not UTF-8, not valid YAML (one line naming the line and
            column) or not a mapping; ``source`` is the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file ({e.strerror or e})", source=str(path)) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        msg = f"line {line}: not UTF-8 text (undecodable byte at offset {e.start})"
        raise ConfigError(msg, source=str(path)) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_text(e, text), source=str(path)) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of keys at the top level, got {type(data).__name__}",
            source=str(path),
        )
    return data


def yaml_error_text(error: yaml.YAMLError, text: str) -> str:
    """A PyYAML error in one line, ``line L, column C: invalid YAML: what (context)``; PyYAML's
    own text spans several lines and quotes the input."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    what = getattr(error, "problem", None) or getattr(error, "reason", None) or str(error)
    where = ""
    if mark is not None:
        where = f"line {mark.line + 1}, column {mark.column + 1}: "
    elif isinstance(getattr(error, "position", None), int):  # a ReaderError (bad character)
        where = f"line {text[: error.position].count(chr(10)) + 1}: "  # type: ignore[attr-defined]
        character = getattr(error, "character", None)
        if isinstance(character, int):
            what = f"unacceptable character #x{character:04x}"
    context = getattr(error, "context", None)
    context_mark = getattr(error, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        context += f" at line {context_mark.line + 1}, column {context_mark.column + 1}"
    detail = f" ({context})" if context else ""
    return " ".join(f"{where}invalid YAML: {what}{detail}".split())


def _set_dotted(data: dict[str, Any], cls: type, key: str, value: Any, ctx: _Context) -> None:
    """Set ``data[a][b][c] = value`` for ``key="a.b.c"``, checking the path against ``cls``."""
    _check_path(cls, key, ctx)
    node = data
    for part in key.split(".")[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):  # absent, None (an optional section) or a stale value
            child = node[part] = {}
        node = child
    node[key.split(".")[-1]] = value


def _check_path(cls: type, key: str, ctx: _Context) -> None:
    """Raise unless every segment of ``key`` but the last names a section of ``cls``."""
    tp: Any = cls
    parts = key.split(".")
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        tp = _section_of(tp)
        if tp is None:
            msg = f"cannot set '{key}': '{prefix}' is a value, not a section"
            raise ConfigError(msg, key=key, source=ctx.source(key))
        if tp is Any:  # a dict[str, X] or Any field: free-form below this point
            return
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        if part not in names:
            raise _unknown_key(part, names, prefix, ctx)
        tp = _hints(tp)[part]


def _section_of(tp: Any) -> Any:
    """The dataclass that ``tp`` (possibly ``X | None``) denotes, ``Any`` for a mapping
    type, else ``None``."""
    if get_origin(tp) in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        tp = options[0] if len(options) == 1 else None
    if dataclasses.is_dataclass(tp):
        return tp
    if tp is Any or tp in (dict, Mapping) or get_origin(tp) in (dict, Mapping):
        return Any
    return None


# ---------------------------------------------------------------------------
# Building dataclasses
# ---------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _build(cls: type[T], data: Any, prefix: str, ctx: _Context, base: Any) -> T:
    """Build dataclass ``cls`` from mapping ``data``; missing fields come from ``base``."""
    if isinstance(data, cls):  # an instance given as a typed override
        return data
    if not isinstance(data, Mapping):
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"{where} must be a mapping of {cls.__name__} fields, got {data!r}",
            key=prefix or None,
            source=ctx.source(prefix),
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for name in data:
        if name not in fields:
            raise _unknown_key(str(name), list(fields), prefix, ctx)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        default = _field_default(f, base)
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key, ctx, default)
        elif default is not dataclasses.MISSING:
            kwargs[name] = default
        else:
            raise ConfigError(
                f"missing required key '{key}' ({_type_name(hints[name])})",
                key=key,
                source=ctx.file or "config",
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        where = f"'{prefix}'" if prefix else cls.__name__
        raise ConfigError(f"invalid {where}: {e}", key=prefix or None, source=ctx.file) from e


def _field_default(f: dataclasses.Field[Any], base: Any) -> Any:
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unknown_key(name: str, valid: list[str], prefix: str, ctx: _Context) -> ConfigError:
    key = f"{prefix}.{name}" if prefix else name
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
    section = f"'{prefix}'" if prefix else "the top level"
    return ConfigError(
        f"unknown key '{key}'{hint} Valid keys in {section}: {', '.join(valid)}",
        key=key,
        source=ctx.source(key),
    )


# ---------------------------------------------------------------------------
# Coercing one value to a declared type
# ---------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, key: str, ctx: _Context, default: Any = None) -> Any:
    """Return ``value`` converted to type ``tp`` or raise a ConfigError naming ``key``."""
    if isinstance(value, _CliText):
        return _coerce_text(value, tp, key, ctx, default)
    origin, args = get_origin(tp), get_args(tp)

    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce_union(value, options, tp, key, ctx, default)
    elif origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        raise _type_error(value, tp, key, ctx)
    elif dataclasses.is_dataclass(tp):
        base = default if isinstance(default, tp) else None  # type: ignore[arg-type]
        return _build(tp, value, key, ctx, base)  # type: ignore[arg-type]
    elif origin in (list, Sequence) or tp in (list, Sequence):
        if isinstance(value, list | tuple):
            item = args[0] if args else Any
            return [_coerce(v, item, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    elif origin is tuple or tp is tuple:
        if isinstance(value, list | tuple):
            return _coerce_tuple(value, args, tp, key, ctx)
    elif origin in (dict, Mapping) or tp in (dict, Mapping):
        if isinstance(value, Mapping):
            ktype, vtype = args if args else (Any, Any)
            return {
                _coerce(k, ktype, f"{key}.{k}", ctx): _coerce(v, vtype, f"{key}.{k}", ctx)
                for k, v in value.items()
            }
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _coerce_enum(value, tp, key, ctx)
    else:
        scalar = _coerce_scalar(value, tp)
        if scalar is not _NO_MATCH:
            return scalar
    raise _type_error(value, tp, key, ctx)


_NO_MATCH = object()


def _coerce_scalar(value: Any, tp: Any) -> Any:
    """``value`` as scalar type ``tp`` (strictly: no ``1`` for ``True``), else ``_NO_MATCH``."""
    if tp is bool and isinstance(value, bool):
        return value
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int and is_number and isinstance(value, int):
        return value
    if tp is float and is_number:
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `3e-5` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return _NO_MATCH
    if tp is str and isinstance(value, str):
        return value
    is_path_type = isinstance(tp, type) and (tp is Path or issubclass(tp, os.PathLike))
    if is_path_type and isinstance(value, str | os.PathLike):
        return Path(value)
    if isinstance(tp, type) and tp not in (bool, int, float, str) and isinstance(value, tp):
        return value
    return _NO_MATCH


def _coerce_text(value: _CliText, tp: Any, key: str, ctx: _Context, default: Any) -> Any:
    """Parse command-line text into ``tp``; the text form of each type is documented
    in :func:`load_config` (``true/false/yes/no``, ``none``, ``a,b,c`` or ``[a, b]``)."""
    text = value.text
    origin, args = get_origin(tp), get_args(tp)
    if text is None:  # a bare flag
        if tp is bool or (origin in (Union, types.UnionType) and bool in args):
            return True
        raise ConfigError(
            f"'{key}' needs a value ({_type_name(tp)}); only bool keys may be bare flags",
            key=key,
            source=ctx.source(key),
        )
    nullable = tp is type(None) or (origin in (Union, types.UnionType) and type(None) in args)
    if nullable and text.strip().lower() in _NONE:
        return None
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _coerce_union(value, options, tp, key, ctx, default)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
    elif tp in (int, float):
        try:
            return tp(text.strip())
        except ValueError:
            pass
    elif tp is str or (tp is Any and not text.strip().startswith(("[", "{"))):
        return text
    elif tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        return Path(text)
    elif origin is Literal:
        for choice in args:
            if str(choice.value if isinstance(choice, enum.Enum) else choice) == text:
                return choice
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _coerce_enum(text, tp, key, ctx)
    elif origin in (list, tuple, Sequence) or tp in (list, tuple, Sequence):
        if text.strip().startswith("["):
            return _coerce(_parse_yaml_text(text, key, ctx), tp, key, ctx, default)
        items = [_CliText(t.strip()) for t in text.split(",")] if text.strip() else []
        return _coerce(items, tp, key, ctx, default)
    else:  # mappings, nested dataclasses, Any
        return _coerce(_parse_yaml_text(text, key, ctx), tp, key, ctx, default)
    raise _type_error(text, tp, key, ctx)


def _coerce_union(
    value: Any, options: list[Any], tp: Any, key: str, ctx: _Context, default: Any = None
) -> Any:
    if len(options) == 1:  # `X | None`: let X's own error (e.g. an unknown nested key) through
        return _coerce(value, options[0], key, ctx, default)
    for option in options:  # first declared type that accepts the value wins
        try:
            return _coerce(value, option, key, ctx, default)
        except ConfigError:
            continue
    raise _type_error(value.text if isinstance(value, _CliText) else value, tp, key, ctx)


def _coerce_tuple(value: Sequence[Any], args: tuple[Any, ...], tp: Any, key: str, ctx: _Context):
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]", ctx) for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(
            f"'{key}': expected {len(args)} items ({_type_name(tp)}), got {len(value)}",
            key=key,
            source=ctx.source(key),
        )
    return tuple(_coerce(v, a, f"{key}[{i}]", ctx) for i, (v, a) in enumerate(zip(value, args)))


def _coerce_enum(value: Any, tp: type[enum.Enum], key: str, ctx: _Context) -> enum.Enum:
    if isinstance(value, tp):
        return value
    for member in tp:
        if value == member.value or value == member.name or value == str(member.value):
            return member
    raise _type_error(value, tp, key, ctx)


def _parse_yaml_text(text: str, key: str, ctx: _Context) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = f"'{key}': cannot parse {text!r}: {yaml_error_text(e, text)}"
        raise ConfigError(msg, key=key, source=ctx.source(key)) from e


def _type_error(value: Any, tp: Any, key: str, ctx: _Context) -> ConfigError:
    got = f"{value!r} ({type(value).__name__})"
    if isinstance(value, Mapping):
        got = f"a mapping with keys {list(value)}"
    return ConfigError(
        f"'{key}': expected {_type_name(tp)}, got {got}", key=key, source=ctx.source(key)
    )


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if tp is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if dataclasses.is_dataclass(tp):
        return f"a {tp.__name__} section"
    return getattr(tp, "__name__", str(tp))
