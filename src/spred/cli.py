"""The ``spred`` command line.

Every command lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> int``; this file only wires them up, so that ``spred --help``
stays fast (nothing heavy is imported until a command runs).

Errors a user can fix (a bad option or config value, an unusable ``--out``, a missing
or corrupt dataset, a failed download) end the command with one line
``spred: error: ...`` on stderr and exit code 2; ``--traceback`` shows the full
traceback instead. Ctrl-C ends it with ``spred: interrupted`` and exit code 130.
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
    parser.add_argument("--traceback", action="store_true", help="on an error, show the full traceback instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        _add(sub, name, module, help_text)
    run = sub.add_parser("run", help="run one of the paper's experiments", description="Run an experiment.")
    run_sub = run.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    for name, (module, help_text) in EXPERIMENTS.items():
        _add(run_sub, name, module, help_text)
    return parser


#: What a user's input can cause: bad values (ValueError, TypeError: config values,
#: dataset names, checksum errors), and files (OSError: a missing dataset, a folder
#: that cannot be written, a failed download). They end a command with one line.
USER_ERRORS = (ValueError, TypeError, OSError)


def fail(exc: BaseException) -> int:
    """Print ``exc`` as one line, ``spred: error: ...``, on stderr; return the exit code 2."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"spred: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stdout
    )
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        if args._config is not None:  # a bad option or config file: one line, before any work starts
            args._config(args)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("spred: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.traceback:
            raise
        return fail(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
