"""Labelled images: the image-folder layout (a folder or a ``.tar.gz`` of one) and
scikit-learn's bundled digits, decoded once into uint8 tensors.

The image-folder layout is the common convention (torchvision's ``ImageFolder``,
Keras' ``image_dataset_from_directory``, Hugging Face ``imagefolder``)::

    root/<split>/<label>/<name>.png|jpg|jpeg|bmp|gif|webp

``root`` may sit one level down in an archive (``cifar10/train/cat/0001.jpg``): the
split folders are found wherever they are. Archives are read member by member without
unpacking. Images are decoded with Pillow, converted to RGB (or L for one channel) and,
when their size differs from the model's, resized (bilinear, as the source is the
user's own data). A file that is not a readable image is an error naming the archive
and member (or, with ``skip_bad_images``, skipped and counted by reason).

A decoded split is ``ImageSplit``: ``pixels`` (N, C, H, W) uint8, ``labels`` (N,), and
the ``names`` of the files, which reports show next to the errors.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from torchformer.data.paths import data_dir

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageDataError",
    "ImageSplit",
    "decode_image",
    "load_digits_splits",
    "read_image_folder",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# Named data sets: where they are found under the data directory.
KNOWN_SOURCES = {"cifar10": "cifar10/cifar10_jpg.tar.gz"}


class ImageDataError(ValueError):
    """An image source that cannot be read (the message names the file and member)."""


@dataclass
class ImageSplit:
    """One decoded split.

    Attributes:
        pixels: (N, C, H, W) uint8.
        labels: (N,) int64 class indices.
        names: N file names (``train/cat/0001.jpg``), the records' ids in reports.
        skipped: reason -> count of files skipped (``skip_bad_images``).
    """

    pixels: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int] | np.ndarray, *, skipped: bool = True) -> ImageSplit:
        """The images at ``indices``; ``skipped``: keep the counts of files skipped while
        reading (False for a part carved out of a split whose other part reports them)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSplit(
            self.pixels[idx],
            self.labels[idx],
            [self.names[i] for i in idx.tolist()],
            dict(self.skipped) if skipped else {},
        )


def resolve_source(source: str) -> Path:
    """A named data set (``cifar10``) under the data directory, or a path."""
    if source in KNOWN_SOURCES:
        path = data_dir() / KNOWN_SOURCES[source]
        if not path.exists():
            raise FileNotFoundError(
                f"{source}: expected {path} (set TORCHFORMER_DATA to the data directory)"
            )
        return path
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image data {path}: no such file or folder")
    return path


# Pillow refuses images over ~179 megapixels (and only warns from ~89 MP): far more than
# any classifier input; a decoded 100-MP image is 300 MB of RGB. Callers may lower it
# (the server does, ``ServeLimits.max_image_pixels``).
MAX_PIXELS = 50_000_000


def to_array(image, *, channels: int, size: int | None) -> np.ndarray:
    """A PIL image -> (C, H, W) uint8: EXIF orientation applied (as phones store photos,
    and as ``transformers``' ``load_image`` does), converted to RGB/L, resized to ``size``."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    image = image.convert("RGB" if channels == 3 else "L")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.array(image, dtype=np.uint8)  # a writable copy
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    return np.ascontiguousarray(array)


def decode_image(
    data: bytes, *, channels: int, size: int | None, name: str, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode image bytes to (C, H, W) uint8, converted to RGB/L and resized to ``size``.

    Raises:
        ImageDataError: not a readable image, or more than ``max_pixels`` pixels (the
            size is read from the header, before decoding); the message names ``name``.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise ImageDataError(
                    f"{name}: image of {image.width}×{image.height} pixels exceeds the limit of "
                    f"{max_pixels:,} pixels"
                )
            return to_array(image, channels=channels, size=size)
    except ImageDataError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, EOFError, struct.error...
        reason = str(e).split(" <_io.BytesIO")[0]  # not the buffer's repr
        raise ImageDataError(
            f"{name}: not a readable image ({type(e).__name__}: {reason})"
        ) from None


def _members(path: Path, wanted) -> Iterator[tuple[str, bytes]]:
    """(relative posix path, bytes) of the regular files of a folder or tar archive for
    which ``wanted(name)`` is true (others are never read)."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            name = file.relative_to(path).as_posix()
            if file.is_file() and wanted(name):
                yield name, file.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile() and wanted(member.name):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ImageDataError(f"{path}: not a readable tar archive ({e})") from None


def _split_and_label(name: str, splits: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, label) of ``.../<split>/<label>/<file>``, or None when not in that layout."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or parts[-3] not in splits:
        return None
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2]


def _fingerprint(path: Path, *parts: object) -> str:
    """A key for the decoded-image cache: the archive's size and time, or every file's
    relative path, size and time in a folder (a file added or replaced changes it)."""
    digest = hashlib.sha256(f"{path.resolve()}|".encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(path) if path.is_dir() else ''}|{stat.st_size}|"
            f"{stat.st_mtime_ns}\n".encode()
        )
    digest.update("|".join(map(str, parts)).encode())
    return digest.hexdigest()[:16]


def _read_cache(cache: Path) -> tuple[dict[str, ImageSplit], list[str]] | None:
    try:
        saved = torch.load(cache, weights_only=True)
        return {k: ImageSplit(**v) for k, v in saved["splits"].items()}, list(saved["classes"])
    except Exception as e:  # a truncated or foreign file: decode again, and say so
        logger.warning("ignoring the unreadable image cache %s (%s); decoding again", cache, e)
        return None


def _write_cache(cache: Path, splits: dict[str, ImageSplit], classes: list[str]) -> None:
    import tempfile

    cache.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name, suffix=".tmp")
    os.close(handle)
    try:
        torch.save({"splits": {k: vars(v) for k, v in splits.items()}, "classes": classes}, tmp)
        os.replace(tmp, cache)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_image_folder(
    source: str | os.PathLike,
    *,
    splits: tuple[str, ...] = ("train", "val", "test"),
    channels: int = 3,
    size: int | None = None,
    skip_bad_images: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, ImageSplit], list[str]]:
    """Decode every image of ``splits`` found in an image folder or archive.

    Args:
        source: a folder, a ``.tar``/``.tar.gz`` archive, or a named data set ("cifar10").
        splits: split folder names to read (those present are returned).
        channels: 3 (RGB) or 1 (grey).
        size: resize to size×size (None: keep; then every image must have one size).
        skip_bad_images: skip unreadable images (counted per split) instead of failing.
        cache_dir: keep the decoded tensors there (keyed by the source's path, size,
            modification time and these settings), so that the next run skips decoding.

    Returns:
        ({split: ImageSplit}, class names sorted), labels indexing the class names, which
        are those of the first split read (normally ``train``).

    Raises:
        ImageDataError: an unreadable image or archive, images of different sizes with
            ``size=None``, a label in a later split that the first has not, or no image.
    """
    path = resolve_source(os.fspath(source))
    cache = None
    if cache_dir is not None:
        key = _fingerprint(path, splits, channels, size, skip_bad_images)
        cache = Path(cache_dir) / f"images-{key}.pt"
        if cache.is_file() and (cached := _read_cache(cache)) is not None:
            logger.info("decoded images from the cache %s", cache)
            return cached

    found: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    skipped: dict[str, Counter] = {}
    for name, data in _members(path, lambda n: _split_and_label(n, splits) is not None):
        split, label = _split_and_label(name, splits)
        try:
            array = decode_image(data, channels=channels, size=size, name=f"{path}: {name}")
        except ImageDataError:
            if not skip_bad_images:
                raise
            skipped.setdefault(split, Counter())["unreadable image"] += 1
            continue
        found.setdefault(split, []).append((name, label, array))
    if not found:
        raise ImageDataError(
            f"{path}: no images in the layout <split>/<label>/<file> for splits {list(splits)} "
            f"(suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    order = [s for s in splits if s in found]
    classes = sorted({label for _, label, _ in found[order[0]]})
    index = {label: i for i, label in enumerate(classes)}
    result: dict[str, ImageSplit] = {}
    for split in order:
        records = sorted(found[split], key=lambda r: r[0])  # archive order is not sorted
        shapes = Counter(a.shape for _, _, a in records)
        if len(shapes) > 1:
            (common, _), *_ = shapes.most_common()
            odd = next(n for n, _, a in records if a.shape != common)
            raise ImageDataError(
                f"{path}: {odd}: image of shape {next(a.shape for n, _, a in records if n == odd)}"
                f" among images of {common} (C, H, W); set data.image_size to resize them"
            )
        unknown = next(((n, lab) for n, lab, _ in records if lab not in index), None)
        if unknown is not None:
            raise ImageDataError(
                f"{path}: {unknown[0]}: label {unknown[1]!r} is not a class of split "
                f"{order[0]!r} ({', '.join(classes)})"
            )
        result[split] = ImageSplit(
            pixels=torch.from_numpy(np.stack([a for _, _, a in records])),
            labels=torch.tensor([index[lab] for _, lab, _ in records], dtype=torch.int64),
            names=[n for n, _, _ in records],
            skipped=dict(skipped.get(split, {})),
        )
    if cache is not None:
        _write_cache(cache, result, classes)
    return result, classes


def load_digits_splits(
    *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[dict[str, ImageSplit], list[str]]:
    """scikit-learn's 8×8 digits (1,797 images, 16 grey levels) as uint8 splits.

    The 0–16 intensities are scaled to 0–255; ``test`` is a stratified ``test_fraction``.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'torchformer[vision]'"
        ) from e
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    names = [f"digits/{i}" for i in range(len(labels))]
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    whole = ImageSplit(torch.from_numpy(images), torch.from_numpy(labels), names)
    splits = {"train": whole.subset(np.sort(train_idx)), "test": whole.subset(np.sort(test_idx))}
    return splits, [str(d) for d in range(10)]
