"""Explicit two-way maps between our parameter names and a checkpoint's.

A map is a list of (ours, theirs) name templates; ``{i}`` stands for a layer
index. Every name is accounted for: a key that no template matches is not
silently dropped but reported by the loader.
"""

from __future__ import annotations

import re


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


class KeyMap:
    """Renames keys in both directions.

    Args:
        pairs: (our template, their template) pairs, e.g.
            ("layers.{i}.self_attn.q_proj.weight", "encoder.layer.{i}.attention.self.query.weight").
    """

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self._ours = [(_compile(o), t) for o, t in pairs]
        self._theirs = [(_compile(t), o) for o, t in pairs]

    @staticmethod
    def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
        for pattern, target in rules:
            m = pattern.match(key)
            if m:
                return target.replace("{i}", m.group("i")) if "i" in m.groupdict() else target
        return None

    def to_ours(self, key: str) -> str | None:
        """Our name for a checkpoint key, or None when no template matches."""
        return self._rename(key, self._theirs)

    def to_theirs(self, key: str) -> str | None:
        """The checkpoint name for one of our keys, or None when no template matches."""
        return self._rename(key, self._ours)
