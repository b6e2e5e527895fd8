"""Where the data lives, how files are verified, and how they are downloaded.

Nothing here knows about particular datasets: :mod:`spred.datasets._registry`
says which files exist, :mod:`spred.datasets._readers` how to parse them.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sys
import tempfile
import urllib.request
import zlib
from pathlib import Path

__all__ = [
    "ChecksumError",
    "DatasetNotFoundError",
    "fetch_file",
    "get_data_home",
    "sha256_file",
    "verify_file",
]

logger = logging.getLogger("spred")

ENV_VAR = "SPRED_DATA"
_CHUNK = 1 << 20

# In-process record of files already verified: key -> the expected hashes they passed.
# The key includes size, mtime and inode, so a file that changes on disk is hashed again.
_VERIFIED: dict[tuple, tuple[str, str | None]] = {}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is not in the data folder.

    The message says where spred looked, how to point it elsewhere (the
    ``SPRED_DATA`` environment variable or ``data_home=``) and, when the
    dataset has a public URL, that ``download=True`` fetches it.
    """

    def __init__(self, message: str, filename: str | os.PathLike | None = None):
        super().__init__(message)
        self.filename = None if filename is None else os.fspath(filename)

    def __str__(self) -> str:  # OSError would print "[Errno None] None: <filename>" once filename is set
        return self.args[0]


class ChecksumError(ValueError):
    """A file's sha256 is not the expected one (a corrupted or different file).

    Attributes
    ----------
    path : str
        The file that was checked.
    expected, actual : str
        The sha256 hex digests expected and found.
    """

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, hint: str = ""):
        self.path, self.expected, self.actual = os.fspath(path), expected, actual
        message = (
            f"Checksum mismatch for file '{self.path}': expected sha256 {expected}, got {actual}."
            + (f" {hint}" if hint else "")
        )
        super().__init__(message)


def _user_cache_dir() -> Path:
    """The per-user cache folder for spred (no platformdirs dependency)."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / "spred" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "spred"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "spred"


def get_data_home(data_home: str | os.PathLike | None = None) -> Path:
    """Return the folder that spred reads real datasets from.

    The first of these that is set wins: the ``data_home`` argument, the
    ``SPRED_DATA`` environment variable, the per-user cache folder
    (``$XDG_CACHE_HOME/spred`` or ``~/.cache/spred`` on Linux,
    ``~/Library/Caches/spred`` on macOS, ``%LOCALAPPDATA%\\spred\\Cache`` on
    Windows). ``~`` is expanded. The folder is not created here; a download
    creates what it needs.

    Parameters
    ----------
    data_home : str or path-like, optional
        An explicit folder, which overrides the environment.

    Returns
    -------
    pathlib.Path
        The data folder (it may not exist yet).

    Examples
    --------
    >>> from spred.datasets import get_data_home
    >>> get_data_home("~/my_data").name
    'my_data'
    """
    if data_home is None:
        data_home = os.environ.get(ENV_VAR) or _user_cache_dir()
    return Path(os.path.expanduser(os.fspath(data_home)))


def _data_home_source(data_home) -> str:
    """Say where :func:`get_data_home` took its answer from (for messages)."""
    if data_home is not None:
        return "the data_home argument"
    if os.environ.get(ENV_VAR):
        return f"the {ENV_VAR} environment variable"
    return f"the default per-user cache folder, since {ENV_VAR} is not set"


def sha256_file(path: str | os.PathLike) -> str:
    """Return the sha256 hex digest of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path : str or path-like
        The file to hash.

    Returns
    -------
    str
        64 lowercase hex digits.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty"
    >>> _ = p.write_bytes(b"")
    >>> sha256_file(p)[:16]
    'e3b0c44298fc1c14'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _gunzipped_sha256(path: Path) -> str | None:
    """sha256 of a gzip file's decompressed content, or None if it is not valid gzip."""
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return h.hexdigest()


def _cache_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def verify_file(
    path: str | os.PathLike,
    sha256: str,
    *,
    gunzipped_sha256: str | None = None,
    hint: str = "",
) -> None:
    """Check a file's sha256, hashing it at most once per process while it is unchanged.

    A verified file is remembered by (path, size, mtime, inode), so loading the
    same dataset again in one process does not hash it again, while a file that
    is replaced or edited is hashed anew.

    Parameters
    ----------
    path : str or path-like
        The file to check.
    sha256 : str
        The expected sha256 hex digest of the file.
    gunzipped_sha256 : str, optional
        For gzip files whose source is the *uncompressed* blob: also accept the
        file when its decompressed content has this sha256 (a copy compressed
        locally by a download is not byte-identical to the staged one).
    hint : str
        Appended to the error message (e.g. how to get a good copy).

    Raises
    ------
    ChecksumError
        If the hash does not match; the message names the file and both hashes.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty"
    >>> _ = p.write_bytes(b"")
    >>> verify_file(p, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    """
    path = Path(path)
    key = _cache_key(path)
    if _VERIFIED.get(key) == (sha256, gunzipped_sha256):
        return
    actual = sha256_file(path)
    if actual != sha256:
        if gunzipped_sha256 is None or _gunzipped_sha256(path) != gunzipped_sha256:
            raise ChecksumError(path, sha256, actual, hint)
    _VERIFIED[key] = (sha256, gunzipped_sha256)


def _progress_bar(total: int | None, desc: str, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr is not None and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


def fetch_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str,
    *,
    gzip_content: bool = False,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its sha256 while streaming.

    The bytes go to a temporary file in the destination folder; only when the
    whole body has arrived and its sha256 matches is that file renamed onto
    ``dest`` (``os.replace``). On a mismatch, a network error, or any exception
    including ``KeyboardInterrupt`` the temporary file is deleted, so ``dest`` is
    never half-written (an older file at ``dest`` stays as it was).

    Parameters
    ----------
    url : str
        What to download (``http``, ``https`` or ``file`` URL).
    dest : str or path-like
        Where the file goes; missing parent folders are created.
    sha256 : str
        Expected sha256 hex digest of the downloaded bytes.
    gzip_content : bool, default False
        Compress the downloaded bytes with gzip on the way to ``dest`` (for
        sources that serve the uncompressed blob of a file stored as ``.gz``).
        The hash is still checked on the downloaded (uncompressed) bytes.
    timeout : float, default 60
        Socket timeout in seconds.
    progress : bool, optional
        Show a tqdm progress bar; by default only when stderr is a terminal.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ChecksumError
        If the downloaded bytes do not have the expected sha256; the message
        names the URL and both hashes.
    ConnectionError
        If the connection closed before ``Content-Length`` bytes arrived.
    urllib.error.URLError
        If the server cannot be reached or answers with an HTTP error.

    Examples
    --------
    >>> import hashlib, pathlib, tempfile
    >>> src = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = src.write_bytes(b"spred")
    >>> digest = hashlib.sha256(b"spred").hexdigest()
    >>> fetch_file(src.as_uri(), src.with_name("b.txt"), digest).read_bytes()
    b'spred'
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False)
    tmp_path = Path(tmp.name)
    try:
        h = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "spred-datasets"})
        with tmp, urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            bar = _progress_bar(int(length) if length else None, dest.name, progress)
            sink = gzip.GzipFile(filename="", mode="wb", fileobj=tmp, mtime=0) if gzip_content else tmp
            received = 0
            try:
                while chunk := response.read(_CHUNK):
                    h.update(chunk)
                    sink.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if gzip_content:
                    sink.close()
                if bar is not None:
                    bar.close()
        if length and received != int(length):
            raise ConnectionError(
                f"Download of {url} was interrupted: received {received} of {length} bytes; '{dest}' was not written."
            )
        actual = h.hexdigest()
        if actual != sha256:
            raise ChecksumError(
                url, sha256, actual, f"The download was deleted; '{dest}' was not written."
            )
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    logger.info("downloaded %s -> %s", url, dest)
    return dest
