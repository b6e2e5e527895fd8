"""``spred datasets list|info|fetch``: what is registered, and what is on this machine."""

from __future__ import annotations

import argparse
import http.client
import logging

from spred.datasets._base import _data_home_source, get_data_home
from spred.datasets._loaders import fetch_dataset, file_status
from spred.datasets._registry import KINDS, dataset_info, list_datasets

logger = logging.getLogger(__name__)

# What a user's mistake or the network can raise: printed as one line, exit code 2 (no traceback).
_USER_ERRORS = (ValueError, OSError, http.client.HTTPException)


def _error(exc: BaseException) -> int:
    from spred.cli import fail  # the one format of a command's error line

    return fail(exc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-home", default=None, metavar="DIR", help="data folder (default: $SPRED_DATA, else a per-user cache)"
    )
    sub = parser.add_subparsers(dest="datasets_command", metavar="ACTION")
    p = sub.add_parser("list", help="one line per dataset: name, kind, shape, classes, status on this machine")
    p.add_argument("--kind", choices=KINDS, default=None, help="only datasets of this kind")
    p = sub.add_parser("info", help="every registry field of one dataset, and where its files are looked for")
    p.add_argument("name", help="a dataset name (see 'spred datasets list')")
    p = sub.add_parser("fetch", help="download a dataset's missing files (sha256-checked, atomic)")
    p.add_argument("name", help="a dataset name (see 'spred datasets list')")
    p.add_argument("--base-url", default=None, help="a mirror laid out like the data folder")
    p.add_argument("--force", action="store_true", help="download again even if present")
    parser.set_defaults(_datasets_parser=parser)


def _status(info, data_home) -> str:
    states = [file_status(f, data_home) for f in info.files]
    if all(s == "verified" for s in states):
        return "verified"
    if "corrupt" in states:
        return "CORRUPT"
    if all(s == "missing" for s in states):
        return "missing"
    return f"missing {states.count('missing')}/{len(states)} files"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _list(args) -> int:
    home = get_data_home(args.data_home)
    print(f"data folder: {home} (from {_data_home_source(args.data_home)})")
    rows = [("name", "kind", "shape", "classes", "status")]
    for name in list_datasets(kind=args.kind):
        info = dataset_info(name)
        shape = f"{info.n_samples} x {info.n_features}"
        status = _status(info, args.data_home) + ("" if info.benchmark else " (fixture)")
        rows.append((info.name, info.kind, shape, str(info.n_classes), status))
    print(_table(rows))
    return 0


def _info(args) -> int:
    try:
        info = dataset_info(args.name)
    except ValueError as exc:
        return _error(exc)
    home = get_data_home(args.data_home)
    fields = [
        ("name", info.name),
        ("title", info.title),
        ("kind", info.kind),
        ("format", info.format),
        ("shape", f"{info.n_samples} x {info.n_features}"),
        ("classes", ", ".join(f"{k}={n} ({c})" for k, (n, c) in enumerate(info.classes))),
        ("label source", info.label_source),
        ("benchmark", "yes" if info.benchmark else "no (format fixture)"),
        ("values", "raw values as float32" if info.divide_by == 1 else f"divided by {info.divide_by}"),
        ("provenance", info.provenance),
        ("licence", info.licence),
        ("notes", info.notes or "-"),
        *([("split", f"{info.split} (of a file that holds several)")] if info.split else []),
        ("data folder", f"{home} (from {_data_home_source(args.data_home)})"),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {value}")
    print("files:")
    for f in info.files:
        print(f"  {f.path}  [{file_status(f, args.data_home)}]")
        print(f"    looked at: {home.joinpath(*f.path.split('/'))}")
        print(f"    sha256: {f.sha256}  size: {f.size} bytes")
        if f.gunzipped_sha256:
            print(f"    sha256 of the gunzipped content: {f.gunzipped_sha256}")
        for url in f.urls or ("(no public URL)",):
            print(f"    url: {url}")
    return 0


def _fetch(args) -> int:
    try:
        paths = fetch_dataset(args.name, data_home=args.data_home, base_url=args.base_url, force=args.force)
    except _USER_ERRORS as exc:  # unknown name, no URL, network, checksum, unwritable folder
        return _error(exc)
    for p in paths:
        print(f"verified {p}")
    return 0


def run(args) -> int:
    command = getattr(args, "datasets_command", None)
    if command == "list":
        return _list(args)
    if command == "info":
        return _info(args)
    if command == "fetch":
        return _fetch(args)
    args._datasets_parser.print_help()
    return 2


