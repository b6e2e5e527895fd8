"""Loading registered datasets: find the files, verify them, download them, read them."""

from __future__ import annotations

import http.client
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from spred._validation import check_choice
from spred.datasets import _cifar, _readers
from spred.datasets._base import (
    ENV_VAR,
    ChecksumError,
    DatasetNotFoundError,
    _data_home_source,
    fetch_file,
    forget_verified,
    get_data_home,
    verify_file,
)
from spred.datasets._registry import DataFile, DatasetInfo, dataset_info

if TYPE_CHECKING:
    from sklearn.utils import Bunch

__all__ = ["fetch_dataset", "load_cifar10", "load_dataset", "load_fashion_mnist_subset", "load_mnist"]

logger = logging.getLogger(__name__)

_CORRUPT_HINT = (
    "The file is corrupted or a different version: delete it and load again with download=True, "
    "or restore it from the original source."
)


def _file_url_list(file: DataFile, base_url: str | None) -> list[tuple[str, str, bool]]:
    """(url, expected sha256 of the downloaded bytes, gzip locally?) for each source of ``file``."""
    if base_url is not None:  # a mirror with the data folder's layout serves the stored file itself
        return [(base_url.rstrip("/") + "/" + file.path, file.sha256, False)]
    out = []
    for url in file.urls:
        recompress = file.gunzipped_sha256 is not None and not urlsplit(url).path.endswith(".gz")
        out.append((url, file.gunzipped_sha256 if recompress else file.sha256, recompress))
    return out


def _not_found(info: DatasetInfo, file: DataFile, path: Path, home: Path, data_home) -> DatasetNotFoundError:
    how = (
        f"Set the {ENV_VAR} environment variable to the folder that holds the data (the one with MANIFEST.md), "
        f"or pass data_home=..."
    )
    if file.urls:
        host = urlsplit(file.urls[0]).netloc
        how += f"; or pass download=True to fetch it from {host} (sha256-checked)."
    else:
        how += "; this file has no public URL, so it cannot be downloaded."
    return DatasetNotFoundError(
        f"Dataset {info.name!r}: file '{file.path}' not found at '{path}'. spred looked in the data folder "
        f"'{home}' (from {_data_home_source(data_home)}). {how}",
        path,
    )


def _download(file: DataFile, dest: Path, base_url: str | None, progress) -> None:
    sources = _file_url_list(file, base_url)
    if not sources:
        raise DatasetNotFoundError(
            f"File '{file.path}' has no public URL and is not at '{dest}'; copy it there by hand.", dest
        )
    errors = []
    for url, sha, recompress in sources:
        try:
            fetch_file(url, dest, sha, gzip_content=recompress, progress=progress)
            return
        except ChecksumError:
            raise
        except (OSError, http.client.HTTPException) as exc:  # network trouble: try the next source
            errors.append(f"{url}: {exc}")
    raise OSError(f"Could not download '{file.path}' from any source: " + "; ".join(errors))


def _ensure(
    info: DatasetInfo, data_home, *, download: bool, base_url: str | None, force: bool = False, progress=None
) -> list[Path]:
    """Paths of the dataset's files, downloaded if asked and allowed, each sha256-verified."""
    home = get_data_home(data_home)
    paths = []
    for file in info.files:
        path = home.joinpath(*file.path.split("/"))
        if force or not path.is_file():
            if not (download or force):
                raise _not_found(info, file, path, home, data_home)
            _download(file, path, base_url, progress)
        verify_file(path, file.sha256, gunzipped_sha256=file.gunzipped_sha256, hint=_CORRUPT_HINT)
        paths.append(path)
    return paths


def fetch_dataset(
    name: str,
    *,
    data_home: str | os.PathLike | None = None,
    base_url: str | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> list[Path]:
    """Download a dataset's files into the data folder (those not already there) and verify them.

    Every file goes through :func:`fetch_file`: a temporary file in the target
    folder, sha256 checked while streaming, then an atomic rename, so an
    interrupted or corrupted download leaves nothing behind. Files already
    present are only verified.

    Parameters
    ----------
    name : str
        A name from :func:`list_datasets`.
    data_home : str or path-like, optional
        The data folder (default: :func:`get_data_home`).
    base_url : str, optional
        A mirror laid out like the data folder (``<base_url>/<relative path>``,
        e.g. ``<base_url>/mnist/t10k-labels-idx1-ubyte.gz``) to use instead of
        the registry's public URLs.
    force : bool, default False
        Download again even if a file is present.
    progress : bool, optional
        tqdm progress bars (default: when stderr is a terminal).

    Returns
    -------
    list of pathlib.Path
        The dataset's files, verified.

    Raises
    ------
    ChecksumError
        If a download or a present file has the wrong sha256.
    OSError
        If every source of a file failed (the message lists each error).

    Examples
    --------
    >>> from spred.datasets import fetch_dataset
    >>> paths = fetch_dataset("colon")  # doctest: +SKIP
    """
    return _ensure(dataset_info(name), data_home, download=True, base_url=base_url, force=force, progress=progress)


def _describe(info: DatasetInfo) -> str:
    classes = ", ".join(f"{k}={n}: {c}" for k, (n, c) in enumerate(info.classes))
    lines = [
        info.title,
        "=" * len(info.title),
        f"kind: {info.kind}; {info.n_samples} samples x {info.n_features} features; {info.n_classes} classes.",
        f"labels (label=original name: count): {classes}",
        f"label source: {info.label_source}",
        f"provenance: {info.provenance}",
        f"licence: {info.licence}",
    ]
    if info.notes:
        lines.append(f"notes: {info.notes}")
    return "\n".join(lines)


def _read(info: DatasetInfo, paths: list[Path]) -> Bunch:
    """Parse the verified files; a parse error of a file that changed since it was verified is a ChecksumError."""
    try:
        return _parse(info, paths)
    except Exception as exc:
        for file, path in zip(info.files, paths):  # hash again, without trusting this process's record
            forget_verified(path)
            try:
                verify_file(path, file.sha256, gunzipped_sha256=file.gunzipped_sha256, hint=_CORRUPT_HINT)
            except ChecksumError as bad:
                raise bad from exc
        raise


def _image_bunch(images: np.ndarray, labels: np.ndarray, names: np.ndarray) -> Bunch:
    y = np.asarray(labels, dtype=np.int64)
    data = images.reshape(images.shape[0], -1)
    return _readers.make_bunch(data=data, target=y, target_names=np.asarray(names, dtype=str), feature_names=None)


def _parse(info: DatasetInfo, paths: list[Path]) -> Bunch:
    if info.format == "mat":
        return _readers.read_mat(paths[0])
    if info.format == "arff":
        return _readers.read_arff(paths[0])
    if info.format == "gds_soft":
        return _readers.read_gds_soft(paths[0])
    if info.format == "idx":
        images, labels = _readers._read_idx(paths[0]), _readers._read_idx(paths[1])
        y, names = _readers.encode_labels(labels)
        return _image_bunch(images, y, names)
    if info.format == "npz":
        with np.load(paths[0]) as zx, np.load(paths[1]) as zy:
            images, labels = zx["arr_0"], zy["arr_0"]
        return _image_bunch(images, labels, info.target_names)  # the files store label indices only
    if info.format == "jpeg_zip":
        return _image_bunch(*_cifar.load_image_zip(paths[0], info.files[0].sha256, info.split))
    raise ValueError(f"Unknown format {info.format!r} for dataset {info.name!r}.")  # pragma: no cover


def load_dataset(
    name: str,
    *,
    data_home: str | os.PathLike | None = None,
    return_X_y: bool = False,
    download: bool = False,
    base_url: str | None = None,
):
    """Load a registered real dataset as float32 features and int64 labels 0..K-1.

    The files are read from the data folder (:func:`get_data_home`: the
    ``data_home`` argument, else ``SPRED_DATA``, else a per-user cache folder),
    and their sha256 is checked (once per process while a file is unchanged).

    What you get, by format:

    * scikit-feature ``.mat`` (gene expression, text, images, arcene, madelon):
      the file's values cast to float32 (raw pixel values 0..255 for the face
      images, counts for text); labels {-1, 1} or 1..K mapped to 0..K-1.
    * biolab ARFF: the numeric attributes (genes) in file order, with their
      names as ``feature_names``; labels in sorted order of the class names.
    * GDS SOFT (GDS507): labels from the ``disease state`` subsets, probes with
      missing values dropped (see :func:`read_gds_soft`); ``feature_names`` are
      the probe ids (``ID_REF``), ``identifiers`` the gene symbols.
    * MNIST (``mnist_train``, ``mnist_test``) and ``fashion_mnist_subset``:
      pixels scaled to [0, 1] (uint8 / 255), flattened to 784 columns; the
      Bunch's ``images`` is the same memory as (n, 28, 28).
    * CIFAR-10 (``cifar10_train``, ``cifar10_test``; a JPEG re-encoding, see
      :func:`load_cifar10`): pixels in [0, 1], 3072 columns; ``images`` is
      (n, 3, 32, 32). The JPEGs are decoded once and cached as uint8.

    Parameters
    ----------
    name : str
        A name from :func:`list_datasets` (case-insensitive).
    data_home : str or path-like, optional
        The data folder (overrides ``SPRED_DATA``).
    return_X_y : bool, default False
        Return ``(X, y)`` instead of a Bunch.
    download : bool, default False
        Download missing files from the dataset's public URLs (see
        :func:`fetch_dataset`).
    base_url : str, optional
        With ``download=True``: a mirror laid out like the data folder, used
        instead of the public URLs.

    Returns
    -------
    Bunch or tuple
        A :class:`sklearn.utils.Bunch` with ``data`` (float32, n_samples x
        n_features, C-contiguous), ``target`` (int64), ``target_names``
        (original class names, str), ``feature_names`` (str array, or None when
        the file has none), ``DESCR``, ``name``, ``info`` (the
        :class:`DatasetInfo`), ``files`` (the paths read), plus ``images``
        (image sets) or ``identifiers``/``sample_ids`` (GDS).
        ``(X, y)`` if ``return_X_y``.

    Raises
    ------
    ValueError
        If the name is unknown.
    DatasetNotFoundError
        If a file is missing; the message says where spred looked and how to
        set ``SPRED_DATA`` (or download).
    ChecksumError
        If a file's sha256 is wrong; the message names the file and both hashes.

    Examples
    --------
    >>> from spred.datasets import load_dataset
    >>> X, y = load_dataset("colon", return_X_y=True)  # doctest: +SKIP
    >>> X.shape, X.dtype, sorted(set(y.tolist()))  # doctest: +SKIP
    ((62, 2000), dtype('float32'), [0, 1])
    """
    info = dataset_info(name)
    paths = _ensure(info, data_home, download=download, base_url=base_url)
    bunch = _read(info, paths)
    if info.divide_by != 1:
        # Divide (not multiply by 1/255) so that the values equal torchvision's ToTensor exactly.
        bunch.data = np.divide(bunch.data, info.divide_by, dtype=np.float32)
    else:
        bunch.data = np.ascontiguousarray(bunch.data, dtype=np.float32)
    if info.image_shape is not None:
        bunch.images = bunch.data.reshape((-1, *info.image_shape))
    if return_X_y:
        return bunch.data, bunch.target
    bunch.update(name=info.name, info=info, files=paths, DESCR=_describe(info))
    return bunch


def load_mnist(
    data_home: str | os.PathLike | None = None,
    *,
    train: bool = True,
    flatten: bool = False,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST training or test set as float32 pixels in [0, 1] and int64 labels.

    Parameters
    ----------
    data_home : str or path-like, optional
        The data folder (default: :func:`get_data_home`).
    train : bool, default True
        The 60000 training images (True) or the 10000 test images (False).
    flatten : bool, default False
        Return ``X`` as (n, 784) instead of (n, 28, 28).
    download : bool, default False
        Download missing files from the official MNIST mirrors.

    Returns
    -------
    X : ndarray of float32, shape (n, 28, 28) or (n, 784)
        uint8 pixels / 255 (as torchvision's ``ToTensor``).
    y : ndarray of int64, shape (n,)
        Digits 0..9.

    Examples
    --------
    >>> from spred.datasets import load_mnist
    >>> X_train, y_train = load_mnist(train=True)  # doctest: +SKIP
    >>> X_test, y_test = load_mnist(train=False, flatten=True)  # doctest: +SKIP
    >>> X_train.shape, X_test.shape  # doctest: +SKIP
    ((60000, 28, 28), (10000, 784))
    """
    b = load_dataset("mnist_train" if train else "mnist_test", data_home=data_home, download=download)
    return (b.data if flatten else b.images), b.target


def load_fashion_mnist_subset(
    data_home: str | os.PathLike | None = None,
    *,
    flatten: bool = False,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The first 2000 Fashion-MNIST *test* images (the only ones staged) and their labels.

    There is no training set here: split these yourself (with a fixed seed and
    stratification, for instance).

    Parameters
    ----------
    data_home : str or path-like, optional
        The data folder (default: :func:`get_data_home`).
    flatten : bool, default False
        Return ``X`` as (2000, 784) instead of (2000, 28, 28).
    download : bool, default False
        Download missing files from their public sources.

    Returns
    -------
    X : ndarray of float32, shape (2000, 28, 28) or (2000, 784)
        uint8 pixels / 255.
    y : ndarray of int64, shape (2000,)
        Classes 0..9 (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal,
        Shirt, Sneaker, Bag, Ankle boot).

    Examples
    --------
    >>> from spred.datasets import load_fashion_mnist_subset
    >>> X, y = load_fashion_mnist_subset()  # doctest: +SKIP
    >>> X.shape, y[:5].tolist()  # doctest: +SKIP
    ((2000, 28, 28), [9, 2, 1, 1, 6])
    """
    b = load_dataset("fashion_mnist_subset", data_home=data_home, download=download)
    return (b.data if flatten else b.images), b.target


def load_cifar10(
    path: str | os.PathLike | None = None,
    *,
    train: bool = True,
    flatten: bool = False,
    dtype: str = "float32",
    data_home: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training or test set: the data folder's JPEG copy, or the original python batches.

    Without ``path``, the registered ``cifar10_train`` / ``cifar10_test``
    (``cifar10_jpeg/cifar10_jpeg.zip`` in the data folder, sha256-checked): all
    60,000 images as JPEG, a lossy re-encoding of CIFAR-10 (the official split
    and class counts; per-channel means equal to 3 decimals, standard
    deviations about 1% smaller), so report results on it as "CIFAR-10 (JPEG)".
    The first call decodes the zip (6-15 s) and caches uint8 arrays in
    ``cifar10_jpeg/cifar10_jpeg.uint8.npz`` beside it, or in the per-user cache
    folder when the data folder is read-only, or keeps them in memory if
    neither is writable; later calls read the cache (checked against the zip's
    sha256 and its own). Images are ordered by file number, then class, so any
    prefix is balanced across classes.

    With ``path``, the original "python version" batch files: the folder
    ``cifar-10-batches-py`` (from ``cifar-10-python.tar.gz``) or its parent,
    read with an unpickler that accepts only NumPy arrays and plain containers
    (no checksum: these files are not in the registry).

    The usual training augmentation (random crop with padding 4, horizontal
    flip) is :class:`spred.datasets.RandomCropFlip`, applied to batches.

    Parameters
    ----------
    path : str or path-like, optional
        The python batches' folder; None (default) reads the JPEG zip.
    train : bool, default True
        The 50,000 training images (True) or the 10,000 test images (False).
    flatten : bool, default False
        Return ``X`` as (n, 3072) instead of (n, 3, 32, 32).
    dtype : {"float32", "uint8"}, default "float32"
        "float32": pixels / 255 in [0, 1] (as torchvision's ``ToTensor``);
        "uint8": the raw pixels (a quarter of the memory).
    data_home : str or path-like, optional
        The data folder for the JPEG zip (default: :func:`get_data_home`).

    Returns
    -------
    X : ndarray, shape (n, 3, 32, 32) or (n, 3072)
        Channels first (torch's layout).
    y : ndarray of int64, shape (n,)
        Labels 0..9: airplane, automobile, bird, cat, deer, dog, frog, horse,
        ship, truck.

    Raises
    ------
    DatasetNotFoundError
        If the zip (or a batch file) is missing; the message says where spred
        looked.
    ChecksumError
        If the zip's sha256 is wrong.

    Examples
    --------
    >>> from spred.datasets import load_cifar10
    >>> X, y = load_cifar10(train=False)  # doctest: +SKIP
    >>> X.shape, X.dtype, y[:10].tolist()  # doctest: +SKIP
    ((10000, 3, 32, 32), dtype('float32'), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    check_choice(dtype, "dtype", "load_cifar10", ("float32", "uint8"))
    if path is not None:
        images, y = _cifar.read_batches(path, train=train)
    else:
        info = dataset_info("cifar10_train" if train else "cifar10_test")
        bunch = _read(info, _ensure(info, data_home, download=False, base_url=None))
        images, y = bunch.data, bunch.target
    images = images.reshape(len(images), -1) if flatten else images.reshape(-1, 3, 32, 32)
    return (images if dtype == "uint8" else np.divide(images, 255, dtype=np.float32)), y


def file_status(file: DataFile, data_home=None) -> str:
    """'verified', 'missing' or 'corrupt' for one registry file (used by the CLI)."""
    path = get_data_home(data_home).joinpath(*file.path.split("/"))
    if not path.is_file():
        return "missing"
    try:
        verify_file(path, file.sha256, gunzipped_sha256=file.gunzipped_sha256)
    except ChecksumError:
        return "corrupt"
    return "verified"
