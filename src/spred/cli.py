"""The ``spred`` command line.

Every command lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> int``; this file only wires them up, so that ``spred --help``
stays fast (nothing heavy is imported until a command runs).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help). Modules are imported lazily.
COMMANDS = {
    "demo": ("spred.experiments.demo", "show the method at work in about a minute (no download)"),
    "datasets": ("spred.datasets._cli", "list the real datasets and where they are looked for"),
}
EXPERIMENTS = {
    "lasso": ("spred.experiments.lasso", "the paper's Lasso experiment (Figure 3)"),
    "genes": ("spred.experiments.genes", "nonlinear gene selection benchmark"),
    "compression": ("spred.experiments.compression", "network compression on MNIST"),
    "optimizers": ("spred.experiments.optimizers", "SGD / Adam / AdamW / Adagrad under spred"),
}


def _add(subparsers, name, module, help_text):
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return  # this command is not part of the installed version
        raise
    mod.add_arguments(parser)
    parser.set_defaults(_run=mod.run, _config=getattr(mod, "config_from_args", None))


def build_parser() -> argparse.ArgumentParser:
    from spred import __version__

    parser = argparse.ArgumentParser(
        prog="spred", description="Sparsity by redundancy: L1 and group-L1 sparsity for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"spred {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        _add(sub, name, module, help_text)
    run = sub.add_parser("run", help="run one of the paper's experiments", description="Run an experiment.")
    run_sub = run.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    for name, (module, help_text) in EXPERIMENTS.items():
        _add(run_sub, name, module, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stdout
    )
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    if args._config is not None:  # a bad option or config file: one line, before any work starts
        try:
            args._config(args)
        except (ValueError, TypeError) as exc:
            print(f"spred: error: {exc}", file=sys.stderr)
            return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
