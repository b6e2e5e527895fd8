"""CIFAR-10: the JPEG zip of the data folder (decoded once, cached as uint8) and the python batches.

The zip holds ``<split>/<class>/<number>.jpg`` (``train`` and ``test``); labels are
the class folders in sorted order, which for CIFAR-10 is its own label order
(airplane=0 ... truck=9). Images are returned as uint8 ``(n, 3, 32, 32)`` (channels
first, torch's layout; flattened, this is the python batches' 3072-column layout),
ordered by file number, then class: image k of every class in turn, so any prefix is
balanced across classes. Decoding 60,000 JPEGs takes 6-15 s, so the arrays are
cached in an uncompressed ``.npz`` beside the zip, or in the per-user cache folder
when the data folder is read-only, or (if neither is writable) only in memory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from spred.datasets._base import DatasetNotFoundError, _user_cache_dir, atomic_write

__all__ = ["load_image_zip", "read_batches", "read_image_zip"]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_FORMAT = 1
# Decoded arrays of zips whose cache could not be written anywhere: source sha256 -> arrays.
_IN_MEMORY: dict[str, dict[str, np.ndarray]] = {}


# --------------------------------------------------------------------------- decoding the zip


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is the 'images' extra
        raise ImportError("Reading the CIFAR-10 JPEG zip needs Pillow: pip install 'spred[images]' (or pillow)") from exc
    return Image


def _members(z: zipfile.ZipFile, where: str) -> dict[str, list[tuple[str, str]]]:
    """split -> [(member name, class name)] for every image ``<split>/<class>/<file>`` of the zip."""
    out: dict[str, list[tuple[str, str]]] = {}
    for info in z.infolist():
        if info.is_dir():
            continue
        parts = info.filename.split("/")
        if len(parts) != 3 or not parts[2].lower().endswith(_IMAGE_SUFFIXES):
            raise ValueError(
                f"{where!r}: member {info.filename!r} is not an image at <split>/<class>/<file>.jpg."
            )
        out.setdefault(parts[0], []).append((info.filename, parts[1]))
    if not out:
        raise ValueError(f"{where!r} holds no image.")
    return out


def _order(name: str) -> tuple:
    stem = name.rsplit("/", 1)[1].rsplit(".", 1)[0]
    return (int(stem), "") if stem.isdigit() else (float("inf"), stem)


def _decode_split(z: zipfile.ZipFile, members: list[tuple[str, str]], classes: list[str], where: str):
    Image = _pillow()
    index = {c: k for k, c in enumerate(classes)}
    members = sorted(members, key=lambda m: (_order(m[0]), index[m[1]]))
    images, labels = None, np.array([index[c] for _, c in members], dtype=np.int64)
    for i, (name, _) in enumerate(members):
        with Image.open(io.BytesIO(z.read(name))) as im:
            pixels = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        if images is None:
            images = np.empty((len(members), *pixels.shape), dtype=np.uint8)
        if pixels.shape != images.shape[1:]:
            raise ValueError(f"{where!r}: {name!r} is {pixels.shape[1]}x{pixels.shape[0]}, the others are "
                             f"{images.shape[2]}x{images.shape[1]}.")  # fmt: skip
        images[i] = pixels
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels


def read_image_zip(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Decode every image of a ``<split>/<class>/<file>.jpg`` zip (no cache, no checksum).

    Parameters
    ----------
    path : str or path-like
        The zip, e.g. ``cifar10_jpeg/cifar10_jpeg.zip``.

    Returns
    -------
    dict
        ``class_names`` (str, sorted: label k is the k-th) and, for each split
        folder ``s``, ``s_images`` (uint8, (n, 3, H, W)) and ``s_labels``
        (int64), ordered by file number, then class.

    Raises
    ------
    ValueError
        If a member is not an image at ``<split>/<class>/<file>``, or the
        images differ in size.

    Examples
    --------
    >>> import io, tempfile, pathlib, zipfile
    >>> from PIL import Image
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "toy.zip"
    >>> with zipfile.ZipFile(p, "w") as z:
    ...     for split, cls, k in [("train", "cat", 0), ("train", "dog", 0), ("test", "dog", 0)]:
    ...         buf = io.BytesIO()
    ...         Image.new("RGB", (4, 4), (255, 0, 0)).save(buf, "PNG")
    ...         z.writestr(f"{split}/{cls}/{k:04d}.png", buf.getvalue())
    >>> arrays = read_image_zip(p)
    >>> arrays["train_images"].shape, arrays["train_labels"].tolist(), arrays["class_names"].tolist()
    ((2, 3, 4, 4), [0, 1], ['cat', 'dog'])
    """
    where = os.fspath(path)
    with zipfile.ZipFile(path) as z:
        splits = _members(z, where)
        classes = sorted({c for members in splits.values() for _, c in members})
        out = {"class_names": np.array(classes, dtype=str)}
        for split, members in sorted(splits.items()):
            out[f"{split}_images"], out[f"{split}_labels"] = _decode_split(z, members, classes, where)
    return out


# --------------------------------------------------------------------------- the checksummed cache


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(memoryview(np.ascontiguousarray(labels)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    return h.hexdigest()


def _cache_paths(zip_path: Path, sha256: str) -> list[Path]:
    """Where the decoded arrays may live, in order: beside the zip, then the per-user cache."""
    name = f"{zip_path.stem}.uint8.npz"
    return [zip_path.parent / name, _user_cache_dir() / "decoded" / sha256[:16] / name]


def _read_cache(cache: Path, sha256: str, split: str):
    """(images, labels, class names) from a cache file, or None if it is absent, stale or corrupt."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as npz:
            if int(npz["format"]) != _CACHE_FORMAT or str(npz["source_sha256"]) != sha256:
                logger.info("ignoring %s: made from another version of the zip", cache)
                return None
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
            names, digest = npz["class_names"], str(npz[f"{split}_sha256"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        logger.warning("ignoring the unreadable CIFAR cache %s (%s); decoding the zip again", cache, exc)
        return None
    if _digest(images, labels) != digest:
        logger.warning("ignoring the CIFAR cache %s: its arrays fail their checksum; decoding the zip again", cache)
        return None
    return images, labels, names


def _read_only(folder: Path) -> bool:
    """A folder whose mode has no write bit at all (a read-only data copy), even for root, who could write."""
    try:
        return not folder.stat().st_mode & 0o222
    except FileNotFoundError:
        return False


def _write_cache(candidates: list[Path], arrays: dict[str, np.ndarray], sha256: str) -> Path | None:
    digests = {f"{k[: -len('_images')]}_sha256": np.array(_digest(v, arrays[k.replace("_images", "_labels")]))
               for k, v in arrays.items() if k.endswith("_images")}  # fmt: skip
    for cache in candidates:
        if _read_only(cache.parent):
            logger.info("not writing the decoded arrays into the read-only folder %s", cache.parent)
            continue
        try:
            with atomic_write(cache) as f:
                np.savez(f, format=np.array(_CACHE_FORMAT), source_sha256=np.array(sha256), **digests, **arrays)
        except OSError as exc:  # read-only data folder (a CI copy), full disk, ...
            logger.info("cannot write the decoded arrays to %s (%s)", cache, exc)
            continue
        logger.info("cached the decoded images in %s", cache)
        return cache
    return None


def load_image_zip(path: str | os.PathLike, sha256: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One split of an image zip whose sha256 the caller verified: from the cache, else decoded and cached.

    Returns ``(images uint8 (n, 3, H, W), labels int64, class_names)``. The
    cache is checked against ``sha256`` (the zip it was made from) and against
    the sha256 of its own arrays; a stale or corrupt cache is decoded again.
    """
    path = Path(path)
    candidates = _cache_paths(path, sha256)
    for cache in candidates:
        found = _read_cache(cache, sha256, split)
        if found is not None:
            return found
    arrays = _IN_MEMORY.get(sha256)
    if arrays is None:
        logger.info("decoding %s once (it takes a few seconds)", path)
        arrays = read_image_zip(path)
        if f"{split}_images" in arrays and _write_cache(candidates, arrays, sha256) is None:
            logger.warning("no writable cache folder for %s: the decoded images are kept in memory only", path)
            _IN_MEMORY[sha256] = arrays
    if f"{split}_images" not in arrays:
        splits = sorted(k[: -len("_images")] for k in arrays if k.endswith("_images"))
        raise ValueError(f"{os.fspath(path)!r} has no split {split!r}; it has {splits}.")
    return arrays[f"{split}_images"], arrays[f"{split}_labels"], arrays["class_names"]


# --------------------------------------------------------------------------- the python batches

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays (no arbitrary code)."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _get(d: dict, key: str):
    return d[key.encode()] if key.encode() in d else d[key]


def _read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(file, "rb") as f:
        batch = _BatchUnpickler(f, encoding="bytes").load()
    try:
        data = np.asarray(_get(batch, "data"), dtype=np.uint8)
        labels = np.asarray(_get(batch, "labels"), dtype=np.int64)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{os.fspath(file)!r} is not a CIFAR-10 batch (no 'data'/'labels').") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{os.fspath(file)!r}: expected data of shape (n, 3072) and n labels; "
            f"got data {data.shape} and {labels.shape[0]} labels."
        )
    return data, labels


def read_batches(path: str | os.PathLike, *, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's "python version" batches as uint8 (n, 3072) and int64 labels 0..9.

    ``path`` is the folder ``cifar-10-batches-py`` or its parent; the pickles
    are read with an unpickler that accepts only NumPy arrays and plain
    containers.
    """
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    absent = [n for n in names if not (root / n).is_file()]
    if absent:
        raise DatasetNotFoundError(
            f"CIFAR-10 batch file(s) {absent} not found in '{root}'. Pass the 'cifar-10-batches-py' folder "
            "(or its parent) extracted from cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html).",
            root / absent[0],
        )
    batches = [_read_batch(root / n) for n in names]
    data, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10 labels must be in 0..9; found {labels.min()}..{labels.max()} in '{root}'.")
    return data, labels
