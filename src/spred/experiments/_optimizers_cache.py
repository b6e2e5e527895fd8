"""``spred run optimizers``: the per-run cache that makes a long study resumable.

Every finished run (tuning, dense or sparse) is written at once as a small JSON file
(and, for a dense run, the trained weights as a ``.pt`` file) in the cache folder,
named by the sha256 of everything that determines it: the study's settings
(``fingerprint``), the run's own (type, optimizer, target, seed, learning rate, ...) and
the spred code it runs (:func:`library_fingerprint`; for a sparse run also the study's
fine-tune and floor, ``_optimizers_floor``).
Running the same study again reads the finished runs back instead of training them;
change a setting and the names change, so no stale run is ever reused. Files are
written to a temporary name and renamed, so an interrupted write leaves no half file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_key", "library_fingerprint", "load_cached", "store_cached"]

#: The code each kind of run executes (packages: every module in them): part of its cache key.
_DENSE_CODE = ("spred.train",)
_SPARSE_CODE = (*_DENSE_CODE, "spred.nn._parametrizations", "spred.nn._sparsify", "spred.nn._rules", "spred.nn._collapse", "spred.nn._report",
                "spred.experiments._optimizers_floor")  # the fine-tune and the magnitude floor of every sparse run
_CODE = {"dense": _DENSE_CODE, "sparse": _SPARSE_CODE, "channels": (*_SPARSE_CODE, "spred.nn._gates", "spred.nn._channels", "spred.nn._graph")}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def cache_key(fingerprint: str, *parts: Any) -> str:
    """A file name stem for one run: sha256 of the study's fingerprint and the run's own settings."""
    text = json.dumps([fingerprint, *_plain(list(parts))], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@functools.cache
def library_fingerprint(kind: str = "sparse") -> str:
    """sha256 (16 hex digits) of the spred code a run of ``kind`` ("dense", "sparse" or "channels") executes.

    Part of every run's key, so that a run made by another version of that code (another
    gate parametrisation, a change of the controller) is trained again, while a change of
    the channel gates leaves the cached unstructured and dense runs valid.
    """
    digest = hashlib.sha256()
    for name in _CODE[kind]:
        module = importlib.import_module(name)
        path = Path(module.__file__)
        for file in sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]:
            digest.update(f"{name}/{file.name}".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def store_cached(cache: str | os.PathLike | None, key: str, row: dict, state: dict | None = None) -> None:
    """Save one finished run (its row, and for a dense run its ``state_dict``); a no-op without a cache folder."""
    if cache is None:
        return
    folder = Path(cache)
    folder.mkdir(parents=True, exist_ok=True)
    if state is not None:
        _atomic(folder / f"{key}.pt", lambda p: torch.save(state, p))
    _atomic(folder / f"{key}.json", lambda p: p.write_text(json.dumps(_plain(row))))


def _unplain(value: Any) -> Any:
    return float(value) if value in ("nan", "inf", "-inf") else value


def load_cached(cache: str | os.PathLike | None, key: str, *, with_state: bool = False) -> tuple[dict | None, dict | None]:
    """``(row, state_dict)`` of a finished run, or ``(None, None)`` when it is not in the cache (or its weights are missing)."""
    if cache is None:
        return None, None
    folder = Path(cache)
    path = folder / f"{key}.json"
    if not path.exists() or (with_state and not (folder / f"{key}.pt").exists()):
        return None, None
    row = {k: _unplain(v) for k, v in json.loads(path.read_text()).items()}
    state = torch.load(folder / f"{key}.pt", weights_only=True) if with_state else None
    return row, state
