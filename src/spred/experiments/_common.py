"""Helpers shared by every ``spred run`` experiment.

An experiment is a config dataclass -> tidy results (one dict per run, written as
CSV) -> a summary. This module holds what every experiment needs around that:
command-line options common to all of them (``--out``, ``--quick``, ``--seeds``,
``--config``, ``--no-plot``, ``--threads``), validating a config
(:func:`check_fields` with the rules :func:`an_int`, :func:`a_float`, ...), resolving
it from its defaults, the quick preset, a JSON file and the command line (in that
order, the command line wins), the output folder (:func:`output_folder`: checked,
locked and written as one set; see ``_outdir``), writing CSV and the resolved config
(with ``spred.__version__``), a markdown table for the terminal, a lazy matplotlib
import, seeding that never touches the global random state, :func:`quiet_logs`, and
:func:`map_jobs`, which runs independent runs in worker processes.

Nothing here imports matplotlib or pandas at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import platform
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spred._validation import check_bool, check_choice, check_choices, check_float, check_int, param_error
from spred.experiments._outdir import (
    OutputFolderError,
    Results,
    ResultsFolder,
    open_results,
    output_folder,
)

__all__ = [
    "OutputFolderError",
    "Results",
    "ResultsFolder",
    "a_bool",
    "a_float",
    "a_str",
    "add_common_arguments",
    "an_int",
    "check_fields",
    "config_from_text",
    "full_batches",
    "import_matplotlib",
    "map_jobs",
    "markdown_table",
    "mapping_of",
    "num_threads",
    "one_of",
    "open_results",
    "output_folder",
    "quiet_logs",
    "read_csv",
    "read_csv_text",
    "resolve_config",
    "some_of",
    "torch_seed",
    "tuple_of",
    "write_config",
    "write_csv",
]


# --------------------------------------------------------------------------- command line


def _int_option(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``low`` (argparse turns the error into ``error: argument --x: ...``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}. Got {text!r} instead.") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}. Got {value} instead.")
        return value

    parse.__name__ = f"int>={low}"
    return parse


#: argparse types for options such as ``--threads`` and ``--seeds``.
positive_int = _int_option(1)
nonnegative_int = _int_option(0)


def add_common_arguments(parser: argparse.ArgumentParser, name: str, quick_help: str = "a smaller version (fewer seeds and epochs)") -> None:
    """Add the options every experiment understands to ``parser``.

    ``quick_help`` says what ``--quick`` runs (each experiment states its own preset).

    ``--seeds`` and ``--config`` default to ``None`` so that :func:`resolve_config`
    can tell an option given on the command line from one left at its default.
    ``--threads`` and ``--seeds`` are checked by argparse (one-line errors, exit code 2).
    """
    parser.add_argument("--out", default=None, metavar="DIR", help=f"output folder (default: results/{name}); a new or empty folder, or one spred wrote")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=None, metavar="SEED", help="random seeds (repetitions)")
    parser.add_argument("--config", default=None, metavar="FILE", help="JSON file of config values (the command line wins)")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV and config only, no figures")
    parser.add_argument("--threads", type=positive_int, default=1, metavar="N", help="torch CPU threads (default: 1)")


# --------------------------------------------------------------------------- config validation
#
# A rule is a callable (value, name, who) -> checked value that raises through
# spred._validation (one message format). check_fields applies rules to the fields of
# a config dataclass, with who = the config class name.

Rule = Callable[[Any, str, str], Any]


def an_int(low: int | None = None, high: int | None = None, *, optional: bool = False) -> Rule:
    """An int (not a bool) in ``[low, high]``."""
    return lambda v, name, who: check_int(v, name, who, low, high, optional=optional)


def a_float(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False, high_open: bool = False, optional: bool = False) -> Rule:
    """A finite real number in the interval (ints are accepted and become floats)."""
    return lambda v, name, who: check_float(v, name, who, low, high, low_open=low_open, high_open=high_open, optional=optional)


def a_bool() -> Rule:
    return check_bool


def a_str() -> Rule:
    def check(v, name, who):
        if not isinstance(v, str):
            raise param_error(TypeError, name, who, "a str", v)
        return v

    return check


def one_of(choices: Sequence[Any]) -> Rule:
    return lambda v, name, who: check_choice(v, name, who, choices)


def some_of(choices: Sequence[Any], *, distinct: bool = True) -> Rule:
    """A non-empty tuple of values from ``choices``."""
    return lambda v, name, who: check_choices(v, name, who, choices, distinct=distinct)


def tuple_of(item: Rule, what: str, *, distinct: bool = False, length: int | None = None, allow_empty: bool = False) -> Rule:
    """A sequence (not a string) whose items pass ``item``; ``what`` describes it in messages.

    ``what`` completes "must be ...", e.g. ``"a non-empty tuple of ints >= 0"``.
    """

    def check(values, name, who):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or (not values and not allow_empty) or (length is not None and len(values) != length):
            raise param_error(TypeError, name, who, what, values)
        out = []
        for v in values:
            try:
                out.append(item(v, name, who))
            except (TypeError, ValueError):
                raise param_error(ValueError if _is_number(v) else TypeError, name, who, what, tuple(values)) from None
        if distinct and len(set(out)) != len(out):
            raise param_error(ValueError, name, who, what + " without repeats", tuple(values))
        return tuple(out)

    return check


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mapping_of(value: Rule, what: str, *, keys: Sequence[str] | None = None) -> Rule:
    """A mapping whose values pass ``value`` (and, with ``keys``, that has every one of them)."""

    def check(mapping, name, who):
        if not isinstance(mapping, Mapping):
            raise param_error(TypeError, name, who, what, mapping)
        missing = [k for k in (keys or ()) if k not in mapping]
        if missing:
            raise param_error(ValueError, name, who, f"{what} with an entry for each of {tuple(keys)!r}", dict(mapping))
        return {k: value(v, f"{name}[{k!r}]", who) for k, v in mapping.items()}

    return check


def check_fields(cfg: Any, rules: Mapping[str, Rule]) -> dict[str, Any]:
    """Apply ``rules`` (field name -> rule) to a config dataclass; return the checked values.

    Messages are those of :mod:`spred._validation` with the config's class name, e.g.
    ``The 'n_steps' parameter of LassoConfig must be an int >= 0. Got -1 instead.``
    Typical use: ``return dataclasses.replace(cfg, **check_fields(cfg, RULES))`` after
    the checks that relate several fields.
    """
    who = type(cfg).__name__
    return {name: rule(getattr(cfg, name), name, who) for name, rule in rules.items()}


def check_relation(ok: bool, cfg: Any, name: str, expected: str) -> None:
    """Raise the one-format ValueError for field ``name`` when a cross-field condition fails."""
    if not ok:
        raise param_error(ValueError, name, type(cfg).__name__, expected, getattr(cfg, name))


# --------------------------------------------------------------------------- config files


def _config_values(values: Any, names: set[str], source: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ValueError(f"The config file '{source}' must hold a JSON object of config values; got {type(values).__name__}.")
    values = values.get("config", values)  # a config.json written by write_config can be fed back
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"The config file '{source}' has unknown keys {unknown}; valid keys are {sorted(names)}.")
    return values


def _load_json_config(path: str | Path, names: set[str]) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"The config file '{path}' is a folder; --config takes a JSON file (such as a config.json that spred run wrote).")
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"The config file '{path}' does not exist.") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"The config file '{path}' is not valid JSON: {exc}.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"The config file '{path}' cannot be read: {exc}.") from exc
    return _config_values(values, names, str(path))


def config_from_text(cls: type, text: str, source: str = "config.json"):
    """The config dataclass ``cls`` saved in ``text`` (a ``config.json`` written by :func:`write_config`)."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"The config file '{source}' is not valid JSON: {exc}.") from exc
    values = _config_values(values, {f.name for f in dataclasses.fields(cls)}, source)
    return resolve_config(cls, cli_values=values)


def resolve_config(cls: type, *, quick: bool = False, quick_values: Mapping[str, Any] | None = None,
                   config_file: str | Path | None = None, cli_values: Mapping[str, Any] | None = None):
    """Build a config dataclass ``cls``: defaults, then the quick preset, the file, the command line.

    ``cli_values`` entries that are ``None`` count as not given. Lists become tuples
    where the dataclass default is a tuple, so the result compares and prints the
    same whichever way a value came in.

    Raises
    ------
    ValueError
        If the config file is missing, not JSON or has keys that ``cls`` does not know.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if quick:
        values.update(quick_values or {})
    if config_file is not None:
        values.update(_load_json_config(config_file, set(fields)))
    values.update({k: v for k, v in (cli_values or {}).items() if v is not None})
    default = cls()
    for key, value in values.items():
        if isinstance(getattr(default, key), tuple) and isinstance(value, list):
            values[key] = tuple(value)
    return dataclasses.replace(default, **values)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return value


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write tidy results (one mapping per row) to ``path``; columns default to the first row's keys."""
    path = Path(path)
    if columns is None:
        columns = list(rows[0]) if rows else []
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row[k]) for k in columns})
    return path


def _parse(value: str) -> Any:
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_csv` back into rows.

    Values are parsed as bool (``True``/``False``), int, float (including ``nan`` and
    ``inf``) or left as strings, in that order; an empty field stays ``""``.
    """
    with Path(path).open(newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_csv_text(text: str) -> list[dict[str, Any]]:
    """:func:`read_csv` for the content of a file (e.g. from :meth:`Results.text`)."""
    return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text, newline=""))]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def write_config(path: str | Path, config: Any, *, experiment: str, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the resolved ``config`` with the versions that produced the results.

    The file holds ``{"experiment", "spred_version", "versions", "argv", "config", ...extra}`` (``argv`` with the
    program's name only, so a shared result does not tell where spred is installed);
    its ``config`` entry can be passed back with ``--config``.
    """
    import numpy
    import torch

    import spred

    payload = {
        "experiment": experiment,
        "spred_version": spred.__version__,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__},
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],  # the program's name, not where it is installed
        "config": _jsonable(config),
    }
    payload.update(_jsonable(dict(extra or {})))
    path = Path(path)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str | Callable[[Mapping], str]]]) -> str:
    """A GitHub markdown table; ``columns`` is a sequence of ``(header, key or row -> str)``."""
    head = [h for h, _ in columns]
    body = []
    for row in rows:
        body.append([str(get(row)) if callable(get) else str(row[get]) for _, get in columns])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def import_matplotlib():
    """Import matplotlib for figures, or fail with the command that installs it.

    Figures are drawn with :class:`matplotlib.figure.Figure` directly (no pyplot, no
    GUI backend), so plotting works the same on a headless machine and in a notebook.
    """
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'spred[plot]' (or pass --no-plot)") from exc
    return matplotlib


@contextlib.contextmanager
def torch_seed(seed: int) -> Iterator[None]:
    """Seed torch inside the block only: the caller's global random state is restored after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (None: leave it), then restore it."""
    import torch

    if n is None:
        yield
        return
    n = check_int(n, "threads", "spred run", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def full_batches(X, y, n_steps: int, most: int = 100):
    """``(data, epochs)`` for :func:`spred.train.fit`: ``n_steps`` full-batch steps in few epochs.

    ``data`` is a DataLoader that yields the full batch ``(X, y)`` ``k`` times per epoch
    (``k`` the largest divisor of ``n_steps`` up to ``most``) and ``epochs * k ==
    n_steps``: the same steps as ``epochs=n_steps, batch_size=len(X)``, with ``fit``'s
    per-epoch work (history record, sparsity, callbacks) done ``k`` times less often.
    """
    from torch.utils.data import DataLoader

    n_steps = check_int(n_steps, "n_steps", "full_batches", 1)
    k = max(d for d in range(1, min(most, n_steps) + 1) if n_steps % d == 0)
    return DataLoader(_Repeat(X, y, k), batch_size=None), n_steps // k


class _Repeat:
    """A map-style dataset whose every item is the full batch ``(X, y)``."""

    def __init__(self, X, y, k: int):
        self.X, self.y, self.k = X, y, k

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, i: int):
        return self.X, self.y


@contextlib.contextmanager
def quiet_logs(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of the named loggers (default ``"spred.train"``) inside the block.

    For an experiment that calls :func:`spred.train.fit` many times and does not want
    its per-epoch INFO lines: ``with quiet_logs(): fit(...)``. Loggers are named by
    package (spred logs through ``logging.getLogger(__name__)``), so this silences a
    subpackage without filtering on file names; the previous levels are restored.
    """
    loggers = [logging.getLogger(n) for n in (names or ("spred.train",))]
    before = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(max(level, log.getEffectiveLevel()))
    try:
        yield
    finally:
        for log, lvl in zip(loggers, before):
            log.setLevel(lvl)


# --------------------------------------------------------------------------- worker processes
_WORKER_SHARED: Any = None


def _worker_init(shared: Any, threads: int) -> None:
    global _WORKER_SHARED
    import torch

    torch.set_num_threads(threads)
    _WORKER_SHARED = shared


def _worker_call(fn: Callable, job: Any) -> Any:
    return fn(_WORKER_SHARED, job)


def map_jobs(fn: Callable[[Any, Any], Any], shared: Any, jobs: Sequence[Any], *, n_jobs: int = 1, threads: int = 1,
             progress: bool = False, desc: str = "", postfix: Callable[[Any], Mapping] | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield ``(job, fn(shared, job))`` for every job, in the order of ``jobs``.

    With ``n_jobs > 1`` the jobs run in that many worker processes (started with
    ``spawn``; ``shared`` is sent once to each worker, each job is pickled), every
    worker with ``threads`` torch threads. ``fn`` must then be a module-level function
    and ``shared`` and the jobs picklable (functions defined in ``__main__`` or a notebook
    are not loadable by spawned workers). torch sends tensors in ``shared`` through shared
    memory (``/dev/shm``; a container may need a larger one for big datasets). Each job
    must seed itself: results do not depend on which worker ran it. A failing job cancels
    the queued ones and its exception is raised here. Timings measured inside jobs that
    run side by side share the machine's memory bandwidth and are noisier than sequential ones.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not progress)
    try:
        if n_jobs <= 1 or len(jobs) <= 1:
            for job in jobs:
                if postfix is not None:
                    bar.set_postfix(postfix(job), refresh=False)
                result = fn(shared, job)
                bar.update()
                yield job, result
            return
        import multiprocessing
        import pickle
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        try:
            pickle.dumps((fn, shared))
        except Exception as exc:
            raise TypeError(
                f"n_jobs={n_jobs} runs the jobs in worker processes, which needs a picklable model factory, data and "
                f"loss (module-level functions and classes, tensors or DataLoaders over plain datasets): {exc}. "
                "Use n_jobs=1 to run in this process."
            ) from exc
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)), mp_context=ctx, initializer=_worker_init, initargs=(shared, threads))
        try:
            futures = [pool.submit(_worker_call, fn, job) for job in jobs]
            for job, future in zip(jobs, futures):
                try:
                    result = future.result()
                except BrokenProcessPool as exc:
                    raise RuntimeError(
                        f"a worker process of n_jobs={n_jobs} died. Functions and classes defined in a notebook or in the "
                        "script being run (__main__) cannot be loaded by spawned workers: define the model factory and "
                        "loss in an importable module, guard the script with `if __name__ == \"__main__\":`, or use n_jobs=1."
                    ) from exc
                bar.update()
                yield job, result
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # a failed job stops the rest (no waiting for queued jobs)
            raise
        else:
            pool.shutdown(wait=True)
    finally:
        bar.close()
