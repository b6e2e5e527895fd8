"""Checkpoints of :func:`spred.train.fit`: one file, written atomically, loaded with ``weights_only=True``.

Guarantees (each held by a test in ``tests/train/test_checkpoints.py``):

* a write is atomic (temporary file, fsync, ``os.replace``): a crash leaves the previous
  checkpoint intact, and the temporary files of killed writers (``checkpoint.pt.tmpPID``)
  are removed by the next save or load in that folder once their process is gone;
* a truncated or corrupt file is a ``ValueError`` naming the file, never a bare ``OSError``;
* a folder is used by one ``fit`` at a time (:func:`acquire_lock`: a lock file naming
  the process, taken over when that process is gone).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_SUFFIX = ".lock"
FORMAT = 1


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    """Where :func:`spred.train.fit` keeps its checkpoint inside ``checkpoint_dir``."""
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when it cannot be told: never delete what may be in use)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete ``<path>.tmpPID`` files left by writers that were killed (their process is gone); the removed paths."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f"{path.name}.tmp*"):
        pid = tmp.name[len(path.name) + 4:]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:  # gone meanwhile, or a read-only folder: nothing to do
            continue
    if removed:
        logger.info("removed %d temporary file(s) of interrupted checkpoint writes: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    A crash during the write leaves the previous checkpoint intact; the temporary file
    of a killed write is removed by the next save or load. ``state`` must hold only
    tensors, numbers, strings, ``None`` and containers of these, so that it loads with
    ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no pickled code runs).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for
    one that is truncated, corrupt or not a spred.train checkpoint.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(
            f"cannot load the checkpoint {path}: the file is truncated or corrupt, or was not written by spred.train "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Delete it to start afresh, or restore a copy."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a spred.train checkpoint (format {FORMAT}); it holds {type(state).__name__} without a matching 'format' key.")
    return state


def acquire_lock(checkpoint: str | os.PathLike) -> Path:
    """Create ``<checkpoint>.lock`` naming this process; a FileExistsError if another live ``fit`` holds it.

    A lock whose process is gone (killed run) is taken over. A lock from another
    machine (shared file system) cannot be checked and counts as held.
    """
    checkpoint = Path(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    lock = checkpoint.with_name(checkpoint.name + LOCK_SUFFIX)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is None:  # gone meanwhile, or held by a dead process: take it over
                lock.unlink(missing_ok=True)
                continue
            raise FileExistsError(
                f"the checkpoint folder {checkpoint.parent} is in use by another fit (process {owner}; lock file {lock}). "
                "Wait for that run to end or use another checkpoint_dir; delete the lock file only if that process is gone."
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return lock
    raise FileExistsError(f"could not take the lock {lock} of the checkpoint folder {checkpoint.parent}: another process keeps creating it.")


def _lock_owner(lock: Path) -> str | None:
    """``"PID on HOST"`` of a live lock holder, or None when the lock is stale (or gone)."""
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
    except FileNotFoundError:
        return None
    except OSError:
        return "unknown"
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return None
    if host == socket.gethostname() and pid.isdigit() and int(pid) == os.getpid():
        return f"{pid} on {host}: this process, in another fit that has not returned"
    return f"{pid or '?'} on {host or '?'}"


def release_lock(lock: Path | None) -> None:
    """Remove a lock taken by :func:`acquire_lock` (nothing for None)."""
    if lock is not None:
        lock.unlink(missing_ok=True)


def rng_state(device: torch.device) -> dict:
    """The global CPU generator's state and, on CUDA, the device generator's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (the CUDA part only on a CUDA device)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
