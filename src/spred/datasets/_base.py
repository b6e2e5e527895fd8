"""Where the data lives, how files are verified, and how they are downloaded.

Nothing here knows about particular datasets: :mod:`spred.datasets._registry`
says which files exist, :mod:`spred.datasets._readers` how to parse them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import re
import secrets
import socket
import sys
import time
import urllib.request
import zlib
from pathlib import Path

__all__ = [
    "ChecksumError",
    "DatasetNotFoundError",
    "atomic_write",
    "clean_stale_parts",
    "fetch_file",
    "forget_verified",
    "get_data_home",
    "sha256_file",
    "verify_file",
]

logger = logging.getLogger(__name__)

ENV_VAR = "SPRED_DATA"
_CHUNK = 1 << 20

# In-process record of files already verified: key -> the expected hashes they passed.
# The key holds size, mtime, ctime and inode, so a file that changes on disk is hashed again;
# an in-place edit that restores the mtime still moves the ctime, which no user call can set.
_VERIFIED: dict[tuple, tuple[str, str | None]] = {}
# A file changed less than this before it was hashed is not remembered ("racy", as git calls it):
# file times come from a coarse clock, so a later edit in the same tick would keep the same key.
_RACY_NS = 1_000_000_000


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


def _cache_key(path: Path) -> tuple[tuple, os.stat_result]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino), st


def forget_verified(path: str | os.PathLike) -> None:
    """Drop what this process remembers about ``path`` (its next :func:`verify_file` hashes it)."""
    where = str(Path(path).resolve())
    for key in [k for k in _VERIFIED if k[0] == where]:
        del _VERIFIED[key]


def verify_file(
    path: str | os.PathLike,
    sha256: str,
    *,
    gunzipped_sha256: str | None = None,
    hint: str = "",
) -> None:
    """Check a file's sha256, hashing it at most once per process while it is unchanged.

    A verified file is remembered by (path, size, mtime, ctime, inode), so
    loading the same dataset again in one process does not hash it again, while
    a file that is replaced or edited is hashed anew (even when the edit keeps
    its size and restores its mtime: the ctime still moves). A file changed
    less than a second before it was hashed is not remembered, since an edit
    within the same tick of the file-system clock could keep every time stamp.

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
    key, st = _cache_key(path)
    if _VERIFIED.get(key) == (sha256, gunzipped_sha256):
        return
    started = time.time_ns()
    actual = sha256_file(path)
    if actual != sha256:
        if gunzipped_sha256 is None or _gunzipped_sha256(path) != gunzipped_sha256:
            raise ChecksumError(path, sha256, actual, hint)
    if max(st.st_mtime_ns, st.st_ctime_ns) < started - _RACY_NS:
        _VERIFIED[key] = (sha256, gunzipped_sha256)


# --------------------------------------------------------------------------- atomic writes

# A partial file is ".<name>.<host>-<pid>-<random>.part" next to its target, so that a later
# writer can tell whether the process that left it is still alive.
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:64]
_PART_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_]*)-(?P<pid>[0-9]+)-[0-9a-f]+")
# Partial files that cannot be traced to a process on this machine (another host sharing the
# folder, or the older ".<name>.<random>.part" names) are stale when untouched for this long:
# a live download writes every chunk and gives up after its socket timeout.
_STALE_AFTER_S = 6 * 3600


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # POSIX only: signal 0 checks existence (on Windows it would kill)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or we cannot tell: keep its file
    return True


def _is_stale(part: Path, middle: str) -> bool:
    owner = _PART_OWNER.fullmatch(middle)
    if owner is not None and owner["host"] == _HOST and os.name == "posix":
        return not _pid_alive(int(owner["pid"]))
    try:
        return time.time() - part.stat().st_mtime > _STALE_AFTER_S
    except FileNotFoundError:
        return False


def clean_stale_parts(dest: str | os.PathLike) -> list[Path]:
    """Delete the partial files that killed writers of ``dest`` left behind; return them.

    A partial file of a process that is still running (on this machine), or
    one written to in the last hours (by another machine sharing the folder),
    is kept.
    """
    dest = Path(dest)
    prefix, removed = f".{dest.name}.", []
    try:
        entries = list(os.scandir(dest.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        middle = name[len(prefix) : -len(".part")]
        if not (name.startswith(prefix) and name.endswith(".part")) or not middle or "." in middle:
            continue  # not ours, or the partial file of a longer name such as "<name>.x"
        part = Path(entry.path)
        if _is_stale(part, middle):
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
                removed.append(part)
                logger.info("removed a partial file left by an interrupted write: %s", part)
    return removed


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike):
    """Write ``dest`` all at once: yield a binary file to fill, rename it onto ``dest`` on success.

    The file is created like a plain ``open(dest, "wb")`` would (mode ``0o666``
    less the umask, so a shared data folder stays readable by its group), under
    a hidden name that holds this host and process id. On any exception,
    ``KeyboardInterrupt`` included, it is deleted and ``dest`` is left as it was.
    Partial files of earlier, killed writers are removed first
    (:func:`clean_stale_parts`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_parts(dest)
    tmp = dest.with_name(f".{dest.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- downloads


def _progress_bar(total: int | None, desc: str, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr is not None and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


def _stream(response, tmp, h, gzip_content: bool, bar) -> int:
    """Copy the response body into ``tmp`` (gzipped if asked), hashing what arrives; return its length."""
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
    return received


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
    never half-written (an older file at ``dest`` stays as it was). A process
    killed outright (SIGKILL) cannot delete it: the next download of ``dest``
    does, once that process is gone (the name holds its host and pid; partial
    files of live downloads are left alone). ``dest`` gets the permissions a
    plain ``open`` would give (``0o666`` less the umask).

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
    h = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "spred-datasets"})
    with atomic_write(dest) as tmp, urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        received = _stream(response, tmp, h, gzip_content, _progress_bar(int(length) if length else None, dest.name, progress))
        if length and received != int(length):
            raise ConnectionError(
                f"Download of {url} was interrupted: received {received} of {length} bytes; '{dest}' was not written."
            )
        actual = h.hexdigest()
        if actual != sha256:
            raise ChecksumError(url, sha256, actual, f"The download was deleted; '{dest}' was not written.")
    logger.info("downloaded %s -> %s", url, dest)
    return dest
