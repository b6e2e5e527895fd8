"""Output folders of ``spred run``: never lose a user's file, never mix two runs.

Every experiment writes its results through :func:`output_folder`::

    with output_folder(out, "lasso") as folder:      # checks and locks --out before any work
        rows = compute(...)
        folder.write_csv(rows, "lasso.csv")           # staged in a hidden folder inside --out
        fig.savefig(folder.file("lasso.png"))
    # on leaving the block the staged files replace the old set, then the manifest is written

The guarantees (docs/lasso_experiment.md, "The output folder"; tests/experiments/test_outdir.py holds them):

* **No data loss.** ``--out`` must be a new folder, an empty one or one that spred
  wrote (it holds the manifest ``.spred-results.json``); a non-empty folder without
  it is refused before anything is computed. A file is only replaced if the manifest
  says spred wrote it.
* **Checked first.** The folder is created, checked for writing and locked before the
  experiment starts, so a read-only ``--out`` fails at once, not after the whole run.
* **One run per folder.** ``.spred-lock`` is created with ``O_EXCL`` and holds the pid
  and host; a second run into the folder is refused while the first is alive; the lock
  of a dead process (same host) is taken over.
* **Whole sets only.** Outputs are staged in ``.spred-tmp-<run id>/`` and moved into
  place at the end; the manifest (run id and the sha256 of every file) is marked
  incomplete first and complete last. :func:`open_results` refuses a folder whose
  manifest is missing, incomplete or does not match the files, so an interrupted or
  concurrent run cannot pass for a consistent one. A run interrupted before the end
  leaves the previous results untouched (and its staged files in the hidden folder
  until the next run into ``--out``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = ".spred-results.json"
LOCK = ".spred-lock"
STAGING_PREFIX = ".spred-tmp-"
RUNS_CACHE = ".spred-runs"  # an experiment's per-run cache (resumable studies): kept across runs, never an output
CACHE = RUNS_CACHE  # one folder for every experiment's resumable results

__all__ = ["LOCK", "MANIFEST", "RUNS_CACHE", "OutputFolderError", "ResultsFolder", "Results", "open_results", "output_folder"]


class OutputFolderError(ValueError):
    """An ``--out`` folder that cannot be used, or saved results that cannot be trusted."""


# --------------------------------------------------------------------------- the manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OutputFolderError(f"The results manifest '{path}' cannot be read ({exc}); delete the folder or choose another --out.") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("written"), list):
        raise OutputFolderError(f"The results manifest '{path}' is not one that spred wrote; delete the folder or choose another --out.")
    return manifest


def _write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest atomically (a reader sees the old one or the new one)."""
    tmp = folder / f"{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)


def _new_manifest(experiment: str) -> dict:
    return {"spred_results": 1, "experiment": experiment, "run_id": None, "complete": False, "files": {}, "written": []}


# --------------------------------------------------------------------------- checking and locking


def _resolve(out: str | os.PathLike | None, name: str) -> Path:
    return Path("results") / name if out is None else Path(out)


def _ours(entry: str) -> bool:
    return entry in (MANIFEST, LOCK, RUNS_CACHE) or entry.startswith(STAGING_PREFIX) or entry.startswith(f"{MANIFEST}.")


def _check_folder(path: Path, name: str) -> None:
    """Create ``path`` if needed and refuse a file or a foreign non-empty folder."""
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"The 'out' folder '{path}' exists and is not a folder; choose another --out.")
    if path.is_dir():
        try:
            entries = sorted(e for e in os.listdir(path) if not _ours(e))
        except OSError as exc:
            raise OutputFolderError(f"The 'out' folder '{path}' cannot be read: {exc.strerror or exc}.") from exc
        if entries and not (path / MANIFEST).exists():
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputFolderError(
                f"The 'out' folder '{path}' is not empty and was not written by spred run (it holds {shown}); "
                "choose a new or empty folder so that no file of yours is replaced (results of an older spred have no manifest: move them away)."
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"The 'out' folder '{path}' cannot be created: {exc.strerror or exc}.") from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _lock_info(lock: Path) -> dict:
    try:
        info = json.loads(lock.read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _acquire(folder: Path) -> Path:
    """Create ``folder/.spred-lock`` exclusively (taking over the lock of a dead process)."""
    lock = folder / LOCK
    payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.datetime.now().isoformat(timespec="seconds")})
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = _lock_info(lock)
            pid, host = info.get("pid"), info.get("host")
            if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
                stale = folder / f"{LOCK}.stale-{pid}-{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):  # another process may take it over first: then O_EXCL decides
                    os.replace(lock, stale)
                    stale.unlink()
                    logger.info("took over the lock of a dead spred run (pid %d) in %s", pid, folder)
                continue
            holder = f"pid {pid} on {host}, since {info.get('since')}" if pid else "unknown process"
            raise OutputFolderError(
                f"The 'out' folder '{folder}' is in use by another spred run ({holder}); wait for it to finish or choose "
                f"another --out (if no run uses it, delete '{lock}')."
            ) from None
        except OSError as exc:
            raise OutputFolderError(f"The 'out' folder '{folder}' is not writable: {exc.strerror or exc}.") from exc
        with os.fdopen(fd, "w") as fh:
            fh.write(payload)
        return lock
    raise OutputFolderError(f"The 'out' folder '{folder}' is in use by another spred run that just took over a stale lock; choose another --out.")


def _release(lock: Path) -> None:
    if _lock_info(lock).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


# --------------------------------------------------------------------------- writing a set of outputs


class ResultsFolder:
    """The outputs of one run, staged in a hidden folder and moved into ``path`` as one set."""

    def __init__(self, path: Path, experiment: str):
        self.path, self.experiment = path, experiment
        self.run_id = uuid.uuid4().hex[:12]
        self.staging = path / f"{STAGING_PREFIX}{self.run_id}"
        self.staging.mkdir()
        self.names: list[str] = []

    def file(self, name: str) -> Path:
        """Where to write output ``name`` now (inside the staging folder)."""
        if not name or Path(name).name != name or _ours(name):
            raise ValueError(f"An output name must be a plain file name. Got {name!r} instead.")
        if name not in self.names:
            self.names.append(name)
        return self.staging / name

    def final(self, name: str) -> Path:
        """Where output ``name`` will be once the run has finished."""
        return self.path / name

    def write_csv(self, rows: Sequence[Mapping[str, Any]], name: str, columns: Sequence[str] | None = None) -> Path:
        """:func:`write_csv` into the set; returns the final path."""
        from spred.experiments import _common

        _common.write_csv(rows, self.file(name), columns)
        return self.final(name)

    def write_text(self, name: str, text: str) -> Path:
        self.file(name).write_text(text)
        return self.final(name)

    def write_config(self, config: Any, *, extra: Mapping[str, Any] | None = None, name: str = "config.json") -> Path:
        """:func:`write_config` into the set, with this run's id."""
        from spred.experiments import _common

        _common.write_config(self.file(name), config, experiment=self.experiment, extra={"run_id": self.run_id, **dict(extra or {})})
        return self.final(name)

    def commit(self) -> None:
        """Move the staged files into place; the manifest says incomplete until all of them are there."""
        manifest = _read_manifest(self.path) or _new_manifest(self.experiment)
        written = set(manifest["written"])
        names = [n for n in self.names if (self.staging / n).exists()]
        foreign = [n for n in names if (self.path / n).exists() and n not in written]
        if foreign:
            raise OutputFolderError(
                f"Not replacing {foreign} in '{self.path}': spred did not write them. This run's outputs are kept in '{self.staging}'."
            )
        old = [n for n in manifest["files"] if n not in names]
        manifest.update(experiment=self.experiment, run_id=self.run_id, complete=False, files={}, written=sorted(written | set(names)))
        _write_manifest(self.path, manifest)
        for n in names:
            os.replace(self.staging / n, self.path / n)
        for n in old:  # outputs of the replaced set that this run does not produce (e.g. figures under --no-plot)
            with contextlib.suppress(FileNotFoundError):
                (self.path / n).unlink()
        manifest.update(complete=True, files={n: _sha256(self.path / n) for n in names})
        _write_manifest(self.path, manifest)
        shutil.rmtree(self.staging, ignore_errors=True)

    def discard(self) -> None:
        """After a failure: drop an empty staging folder, keep one with files (and say where)."""
        if self.staging.is_dir() and any(self.staging.iterdir()):
            logger.warning("the run stopped before writing its results; its partial outputs are in %s", self.staging)
        else:
            shutil.rmtree(self.staging, ignore_errors=True)


def _clear_stale_staging(folder: Path) -> None:
    for entry in folder.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def output_folder(out: str | os.PathLike | None, name: str) -> Iterator[ResultsFolder]:
    """Check, create and lock the output folder; yield a :class:`ResultsFolder`; commit on success.

    Parameters
    ----------
    out : path or None
        ``--out`` (``results/<name>`` when None).
    name : str
        The experiment, recorded in the manifest.

    Raises
    ------
    OutputFolderError
        ``out`` is a file, a non-empty folder that spred did not write, not writable, or
        in use by another run (all checked on entry, before the block runs); or the
        commit would replace a file that spred did not write.
    """
    path = _resolve(out, name)
    _check_folder(path, name)
    lock = _acquire(path)
    try:
        _clear_stale_staging(path)  # partial outputs of earlier interrupted runs: we hold the lock, nobody writes them
        try:
            folder = ResultsFolder(path, name)
        except OSError as exc:
            raise OutputFolderError(f"The 'out' folder '{path}' is not writable: {exc.strerror or exc}.") from exc
        try:
            yield folder
        except BaseException:
            folder.discard()
            raise
        folder.commit()
    finally:
        _release(lock)


# --------------------------------------------------------------------------- reading results back


class Results:
    """Saved results whose manifest was checked: every file is read once and its sha256 verified."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    def __contains__(self, name: object) -> bool:
        """Whether the run wrote output ``name``."""
        return name in self.manifest["files"]

    def text(self, name: str) -> str:
        """The content of output ``name``, refused if it is not the file this run wrote."""
        files = self.manifest["files"]
        if name not in files:
            raise OutputFolderError(f"The results in '{self.path}' (run {self.run_id}) have no '{name}'.")
        try:
            data = (self.path / name).read_bytes()
        except FileNotFoundError as exc:
            raise OutputFolderError(f"The results in '{self.path}' are incomplete: '{name}' is missing.") from exc
        if hashlib.sha256(data).hexdigest() != files[name]:
            raise OutputFolderError(
                f"The results in '{self.path}' are mixed: '{name}' is not the file that run {self.run_id} wrote "
                "(changed by hand, or by another run). Run the experiment again."
            )
        return data.decode()


def open_results(out: str | os.PathLike, experiment: str) -> Results:
    """The results of the last complete run of ``experiment`` in ``out``.

    Raises
    ------
    OutputFolderError
        No manifest (not written by spred run), another experiment's results, or an
        incomplete set (a run was interrupted while writing its outputs).
    """
    path = Path(out)
    manifest = _read_manifest(path)
    if manifest is None:
        raise OutputFolderError(f"'{path}' holds no results of 'spred run {experiment}' (no {MANIFEST}).")
    if manifest.get("experiment") != experiment:
        raise OutputFolderError(f"'{path}' holds results of '{manifest.get('experiment')}', not of '{experiment}'.")
    if not manifest.get("complete") or not manifest["files"]:
        raise OutputFolderError(
            f"The results in '{path}' are incomplete: a run was interrupted while writing them (run {manifest.get('run_id')}). "
            "Run the experiment again."
        )
    return Results(path, manifest)
