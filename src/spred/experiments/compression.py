"""``spred run compression``: network compression with spred against pruning baselines.

Protocol (``docs/compression.md`` has the long version and the numbers):

* **Unstructured.** LeNet-300-100 and LeNet-5-Caffe on MNIST (ResNet-18 on CIFAR-10
  with ``--cifar10 PATH --device cuda``). Every method is run at the same target
  compression ratios ``R``: the final model may have at most ``floor(total / R)``
  nonzero parameters, ``total`` counting every weight and bias of the original model
  (buffers never count). The reported ratio is ``total / nonzero`` of the final model.
* **Methods, at equal epochs** (``epochs`` of training + ``finetune_epochs`` of masked
  fine-tuning for everyone, the same optimizer, batch size and data order):

  ``spred``
      :func:`spred.sparsify` (elementwise), trained with a target-sparsity
      controller (:class:`spred.train.TargetSparsity`) that adapts lam, then
      :func:`spred.collapse` at ``threshold``;
  ``magnitude``
      dense training, one-shot global magnitude pruning
      (``torch.nn.utils.prune.global_unstructured``);
  ``gmp``
      gradual magnitude pruning (Zhu & Gupta, 2017), cubic schedule;
  ``synflow``
      SynFlow (Tanaka et al., 2020): 100 data-free rounds at initialisation, then
      training with the mask for ``epochs + finetune_epochs``;
  ``str``
      soft threshold reparametrisation (Kusupati et al., 2020), its weight decay
      adapted to reach the target sparsity;
  ``l1``
      dense training with ``lam * ||W||_1`` added to the loss (lam: the final lam of
      spred for the same model, ratio and seed, unless ``l1_lam`` is set).

  Every method then keeps its best weights within the budget
  (:func:`~spred.experiments._baselines_prune.budget_masks`: magnitude, or the SynFlow
  score), removes dead units exactly (constants folded into the next bias), and
  fine-tunes with the zeros frozen from a fresh optimizer (``fit(mask=...)``).
  Each row records the training cost: epochs, pruning steps and wall time.
* **Structured.** LeNet-5-Caffe (or ``--structured-model smallvgg``) with ``groups="out"`` (one penalty group per conv
  filter and hidden neuron, not the output layer), trained to a target sparsity,
  collapsed, fine-tuned with frozen zeros, then physically pruned by
  :func:`spred.compress.prune_channels`. Reported: the outputs of the pruned module
  against the collapsed one, parameters, FLOPs and the measured latency at batch 1
  and 256; and a filter-norm baseline pruned to the same widths.

Outputs under ``--out``: ``compression.csv`` (one row per model, method, ratio and
seed), ``compression_structured.csv``, ``compression_summary.csv`` (mean and std
over seeds), ``compression.png`` (test error against compression ratio per method),
``summary.md`` and ``config.json``, written as one set (the ``--out`` folder is checked
and locked before any work; see :func:`spred.experiments._common.output_folder`);
:func:`load_results` reads them back.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spred.datasets import RandomCropFlip
from spred.experiments import _common
from spred.experiments import _compression_cifar as _cifar
from spred.experiments import _compression_structured as _structured
from spred.experiments import _compression_unstructured as _unstructured
from spred.experiments._compression_config import (
    DEFAULT_LRS,
    DEFAULT_RATIOS,
    METHODS,
    MODELS,
    QUICK,
    STRUCTURED_MODELS,
    CompressionConfig,
    check_config,
)
from spred.experiments._compression_report import PUBLISHED, comparisons, plot, structured_table, summary_table
from spred.experiments._data import image_tensors, seeded_split

logger = logging.getLogger(__name__)

__all__ = [
    "CompressionConfig",
    "CompressionResults",
    "DEFAULT_LRS",
    "DEFAULT_RATIOS",
    "Data",
    "METHODS",
    "PUBLISHED",
    "QUICK",
    "RandomCropFlip",
    "add_arguments",
    "build_model",
    "check_config",
    "comparisons",
    "config_from_args",
    "load_data",
    "load_results",
    "plot",
    "report",
    "run",
    "run_experiment",
    "run_structured",
    "run_unstructured",
    "structured_table",
    "summarise",
    "summary_table",
]

NAME = "compression"
DATASET = {"lenet300100": "mnist", "lenet5caffe": "mnist", "resnet18": "cifar10", "resnet20": "cifar10", "smallvgg": "mnist"}
#: Constructor options: SmallVGG on MNIST, without BatchNorm (each conv has a bias, zeroed with its channel).
MODEL_KWARGS = {"smallvgg": {"in_channels": 1, "batch_norm": False}}
CSV_COLUMNS = (
    "model", "method", "seed", "target_ratio", "compression_ratio", "total", "nonzero", "nonzero_weights",
    "test_error", "test_error_before_finetune", "train_epochs", "finetune_epochs", "epochs", "prune_steps",
    "wall_s", "lam", "dead_units", "train_size",
)  # fmt: skip
STRUCTURED_COLUMNS = (
    "model", "method", "seed", "target_sparsity", "lam_exponent", "round_to", "widths_before", "widths_nonzero", "widths_after", "params", "params_pruned",
    "compression_ratio", "flops", "flops_pruned", "flop_ratio", "latency_b1_ms", "latency_b1_pruned_ms",
    "speedup_b1", "latency_b256_ms", "latency_b256_pruned_ms", "speedup_b256", "latency_b1_cl_ms", "latency_b1_cl_pruned_ms",
    "speedup_b1_cl", "latency_b256_cl_ms", "latency_b256_cl_pruned_ms", "speedup_b256_cl", "max_abs_diff", "max_rel_diff", "max_abs_diff_fp64",
    "fp32_error_collapsed", "fp32_error_pruned",
    "test_error_collapsed", "test_error", "epochs", "wall_s", "threads",
)  # fmt: skip


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    """Train and test tensors of one dataset (images, channels first) and a small example batch."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def example(self) -> torch.Tensor:
        return self.X_test[:8]


def load_data(dataset: str, *, train_size: int | None = None, seed: int = 0, cifar10: str | None = None) -> Data:
    """MNIST (1 x 28 x 28) or CIFAR-10 (3 x 32 x 32) as float32 tensors in [0, 1].

    ``train_size`` draws a random subset of the training set from ``seed``; the test
    set is always the full one (10,000 images).
    """
    if dataset == "mnist":
        from spred.datasets import load_mnist

        X, y = load_mnist(train=True)
        Xt, yt = load_mnist(train=False)
    elif dataset == "cifar10":
        from spred.datasets import load_cifar10

        X, y = load_cifar10(cifar10, train=True)
        Xt, yt = load_cifar10(cifar10, train=False)
    else:
        raise ValueError(f"Unknown dataset {dataset!r}; expected 'mnist' or 'cifar10'.")
    (X, y), (Xt, yt) = image_tensors(X, y), image_tensors(Xt, yt)
    if train_size is not None and train_size < len(X):
        idx, _ = seeded_split(len(X), train_size, seed)
        X, y = X[idx], y[idx]
    return Data(X, y, Xt, yt)


def build_model(name: str, seed: int) -> nn.Module:
    """A reference network initialised from ``seed`` (ResNet-18 gets the CIFAR augmentation in front)."""
    from spred.models import build

    model = build(name, seed=seed, **MODEL_KWARGS.get(name, {}))
    if DATASET[name] == "cifar10":
        model = nn.Sequential(RandomCropFlip(), model)
    return model


# --------------------------------------------------------------------------- runs


def run_unstructured(cfg: CompressionConfig, model_name: str, seed: int, data: Data, *, progress: bool = False) -> list[dict]:
    """The dense reference and every method at every ratio of ``model_name`` for one seed: CSV rows.

    The dense model trained for ``epochs`` is shared by the magnitude baseline at
    all ratios (its wall time counts the dense training); spred runs first so that
    the L1 baseline can use its final lam. The methods are in
    :mod:`spred.experiments._compression_unstructured`; every model comes from
    :func:`build_model`.
    """
    return _unstructured.run_unstructured(cfg, model_name, seed, data, build_model, progress=progress)


def run_structured(cfg: CompressionConfig, seed: int, data: Data, *, progress: bool = False) -> list[dict]:
    """Channel sparsity: spred with ``groups="out"`` and a filter-norm baseline at the same widths.

    spred, once per ``structured_sparsity`` and ``structured_lam_exponents``: sparsify
    every conv filter and hidden neuron (not the output layer) with one group each (lam
    weighted by ``positions**exponent``), train to the target sparsity with the controller,
    collapse, zero the biases of the zero channels (a removed channel takes its bias
    along), fine-tune with those zeros frozen, then
    :func:`spred.compress.prune_channels`. The baseline trains the dense network for
    the same epochs (once, shared), zeroes the filters / neurons of smallest L2 norm
    so that every layer keeps as many as spred's, and fine-tunes with them frozen.
    Every row reports the pruned module against the collapsed one (outputs,
    parameters, FLOPs, latency). The runs are in
    :mod:`spred.experiments._compression_structured`.
    """
    return _structured.run_structured(check_config(cfg), seed, data, build_model, progress=progress)


# --------------------------------------------------------------------------- summary


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Mean and standard deviation over seeds per (model, target ratio, method)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["target_ratio"], r["method"])].append(r)
    out = []
    for (model, target, method), rs in groups.items():
        def stat(key, fn):
            vals = [float(r[key]) for r in rs]
            return fn(vals) if len(vals) > 1 or fn is statistics.mean else 0.0

        out.append({
            "model": model, "target_ratio": target, "method": method, "n_seeds": len(rs),
            "compression_ratio": stat("compression_ratio", statistics.mean),
            "compression_ratio_min": min(float(r["compression_ratio"]) for r in rs),
            "test_error_mean": stat("test_error", statistics.mean), "test_error_std": stat("test_error", statistics.stdev),
            "test_error_before_finetune": stat("test_error_before_finetune", statistics.mean),
            "epochs": rs[0]["epochs"], "prune_steps": stat("prune_steps", statistics.mean), "wall_s": stat("wall_s", statistics.mean),
        })  # fmt: skip
    return out



# --------------------------------------------------------------------------- the experiment


def _warm_up(device: str) -> None:
    """One optimizer step on a tiny model, so that one-time imports (torch's optimizers load
    ``torch._dynamo`` on their first step, seconds on a busy CPU) are not charged to the first method."""
    from spred.train import fit

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    for opt in ("adam", "sgd"):
        fit(model, (torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)), epochs=1, optimizer=opt, device=device, progress=False)


@dataclass
class CompressionResults:
    """What :func:`run_experiment` returns: the CSV rows, the per-seed summary, the files written and the wall time."""

    rows: list[dict]
    structured: list[dict]
    summary: list[dict]
    files: dict[str, Path]
    seconds: float
    threads: int = 1


def run_experiment(cfg: CompressionConfig, out: str | Path | None = None, *, plot_figure: bool = True, progress: bool | None = None) -> CompressionResults:
    """Run every (model, seed) and the structured experiment; write the outputs (see the module docstring).

    ``out`` (``results/compression`` when None) must be a new or empty folder, or one
    that spred run wrote; it is checked and locked before anything is computed, and
    the outputs replace the previous set only once all of them are written (see
    :func:`spred.experiments._common.output_folder`). :func:`load_results` reads them back.
    """
    from tqdm.auto import tqdm

    cfg = check_config(cfg)
    with _common.output_folder(out, NAME) as folder:
        start = time.perf_counter()
        rows: list[dict] = []
        structured: list[dict] = []
        cache: dict[tuple[str, int], Data] = {}

        def data_for(dataset: str, seed: int) -> Data:
            key = (dataset, seed if cfg.train_size else 0)
            if key not in cache:
                cache.clear()
                cache[key] = load_data(dataset, train_size=cfg.train_size, seed=seed, cifar10=cfg.cifar10)
            return cache[key]

        _warm_up(cfg.device)
        jobs = [(m, s) for m in cfg.models for s in cfg.seeds] + ([("structured", s) for s in cfg.seeds] if cfg.structured else [])
        bar = tqdm(total=len(jobs), desc=NAME, unit="run", disable=progress is False)
        for model, seed in jobs:
            bar.set_postfix(model=model, seed=seed, refresh=False)
            if model == "structured":
                structured += run_structured(cfg, seed, data_for("mnist", seed), progress=bool(progress))
                folder.write_csv(structured, "compression_structured.csv", STRUCTURED_COLUMNS)  # an interrupted run keeps its finished runs (staged)
            else:
                rows += run_unstructured(cfg, model, seed, data_for(DATASET[model], seed), progress=bool(progress))
                folder.write_csv(rows, "compression.csv", CSV_COLUMNS)
            bar.update(1)
        bar.close()
        seconds = time.perf_counter() - start
        results = CompressionResults(rows, structured, summarise(rows), {}, seconds, torch.get_num_threads())
        _write_outputs(folder, results, cfg, plot_figure)
    return results


def _write_outputs(folder: _common.ResultsFolder, results: CompressionResults, cfg: CompressionConfig, plot_figure: bool) -> None:
    """The summary, figure, tables and config of a finished run, staged in ``folder``; their final paths in ``results.files``."""
    files = results.files
    if results.rows:
        files["runs"] = folder.final("compression.csv")
        files["summary"] = folder.write_csv(results.summary, "compression_summary.csv")
    if results.structured:
        files["structured"] = folder.final("compression_structured.csv")
    if plot_figure and (results.rows or results.structured):
        plot(results.rows, results.structured, folder.file("compression.png"))
        files["figure"] = folder.final("compression.png")
    files["summary_md"] = folder.write_text("summary.md", report(results) + "\n")
    files["config"] = folder.write_config(cfg, extra={"wall_seconds": results.seconds, "threads": results.threads})


def load_results(out: str | Path) -> tuple[CompressionConfig, list[dict], list[dict]]:
    """Read back what :func:`run_experiment` wrote under ``out``: (config, rows, structured rows).

    The files are checked against the manifest of the run that wrote them: the results
    of an interrupted run, of two runs mixed, or edited by hand are refused
    (``OutputFolderError``, a ``ValueError``). A run without unstructured (structured)
    runs gives empty ``rows`` (``structured``). Merge runs split over several ``--out``
    folders with ``summarise(rows_a + rows_b)``.
    """
    saved = _common.open_results(out, NAME)
    cfg = check_config(_common.config_from_text(CompressionConfig, saved.text("config.json"), str(Path(out) / "config.json")))
    def table(name: str) -> list[dict]:
        return _common.read_csv_text(saved.text(name)) if name in saved else []

    return cfg, table("compression.csv"), table("compression_structured.csv")


def report(results: CompressionResults) -> str:
    """The markdown printed at the end: the unstructured table, the comparisons, the structured table."""
    parts = []
    if results.rows:
        parts += ["Unstructured compression (test error on the 10,000 test images; mean ± std over seeds):", "",
                  summary_table(results.summary), ""]  # fmt: skip
        parts += [f"- {line}" for line in comparisons(results.summary)] + [""]
    if results.structured:
        parts += ["Structured (channel) compression; latency of the pruned module against the collapsed one (medians):", "",
                  structured_table(results.structured), ""]  # fmt: skip
    parts.append(f"Total wall time: {results.seconds:.0f} s ({results.threads} torch thread{'s' if results.threads > 1 else ''}).")
    return "\n".join(parts)


def add_arguments(parser) -> None:
    """Options of ``spred run compression``."""
    _common.add_common_arguments(parser, NAME, "LeNet-300-100 on 10,000 MNIST images at 12x and 68x, structured LeNet-5 at 50%% and 95%%, one seed (about 7 minutes on one core)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None, help="networks (default: lenet300100 lenet5caffe)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="methods (default: all)")
    parser.add_argument("--ratios", type=float, nargs="+", default=None, metavar="R", help="target compression ratios for every model")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs N (default 30)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="masked fine-tuning epochs M (default 10)")
    parser.add_argument("--train-size", type=int, default=None, help="random subset of the training set")
    parser.add_argument("--device", default=None, help="cpu (default), cuda, ...")
    parser.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist",
                        help="cifar10: the structured CIFAR-10 (JPEG) experiment (spred channel groups against channel baselines)")
    parser.add_argument("--model", choices=_cifar.CIFAR_MODELS, default=None, help="with --dataset cifar10: the network (default resnet20)")
    parser.add_argument("--workers", type=int, default=None, help="with --dataset cifar10: worker processes per seed (default 1)")
    parser.add_argument("--cifar10", default=None, metavar="PATH", help="CIFAR-10 python batches (for resnet18)")
    parser.add_argument("--no-dense", action="store_true",
                        help="skip the dense reference (its error and time; not with --methods magnitude)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-structured", action="store_true", help="skip the structured (channel) experiment")
    group.add_argument("--structured-only", action="store_true", help="run the structured (channel) experiment only")
    parser.add_argument("--structured-model", choices=STRUCTURED_MODELS, default=None,
                        help="CNN of the structured runs (default lenet5caffe; smallvgg: conv 32-32-64-64-128-128, time in the convolutions)")
    parser.add_argument("--structured-sparsity", type=float, nargs="+", default=None, metavar="S",
                        help="target fractions of zeros of the structured runs (default: 0.5 0.8 0.95)")
    parser.add_argument("--round-to", type=int, default=None, metavar="N",
                        help="structured runs: keep a multiple of N channels in every pruned layer (8: the fastest widths on CPU)")


def config_from_args(args) -> CompressionConfig | _cifar.CifarCompressionConfig:
    """The resolved config: defaults, ``--quick``, ``--config FILE``, then the other options."""
    if getattr(args, "dataset", "mnist") == "cifar10":
        return _cifar_config(args)
    cli = {
        "seeds": args.seeds, "models": args.models, "methods": args.methods, "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs, "train_size": args.train_size, "device": args.device, "cifar10": args.cifar10,
        "structured": False if args.no_structured else None, "dense": False if args.no_dense else None,
        "structured_model": args.structured_model, "structured_sparsity": None if args.structured_sparsity is None else tuple(args.structured_sparsity),
        "round_to": args.round_to,
    }  # fmt: skip
    cfg = _common.resolve_config(CompressionConfig, quick=args.quick, quick_values=QUICK, config_file=args.config, cli_values=cli)
    if args.structured_only:
        if args.models is not None or args.ratios is not None:
            raise ValueError("--structured-only runs the structured CNN only: drop --models / --ratios.")
        cfg = dataclasses.replace(cfg, models=(), structured=True)
    elif args.ratios is not None:
        cfg = dataclasses.replace(cfg, ratios={m: tuple(args.ratios) for m in cfg.models})
    elif args.models is not None:
        cfg = dataclasses.replace(cfg, ratios={m: tuple(cfg.ratios.get(m, DEFAULT_RATIOS[m])) for m in cfg.models})
    return check_config(cfg)


def _cifar_config(args) -> _cifar.CifarCompressionConfig:
    """``--dataset cifar10``: defaults, ``--quick`` (:data:`._compression_cifar.CIFAR_QUICK`), ``--config FILE``, options."""
    cli = {"seeds": args.seeds, "model": args.model, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
           "train_size": args.train_size, "device": args.device, "workers": args.workers}  # fmt: skip
    cfg = _common.resolve_config(_cifar.CifarCompressionConfig, quick=args.quick, quick_values=_cifar.CIFAR_QUICK,
                                 config_file=args.config, cli_values=cli)  # fmt: skip
    return _cifar.check_cifar_config(cfg)


def _run_cifar(args) -> int:
    """``spred run compression --dataset cifar10``: the structured CIFAR-10 experiment (:mod:`._compression_cifar`)."""
    cfg = _cifar_config(args)
    with _common.num_threads(args.threads):
        _, text = _cifar.run_cifar_experiment(cfg, args.out, plot_figure=not args.no_plot)
    print(text)
    return 0


def run(args) -> int:
    """``spred run compression``: run, write the outputs, print the tables; returns the exit code."""
    if getattr(args, "dataset", "mnist") == "cifar10":
        return _run_cifar(args)
    cfg = config_from_args(args)
    with _common.num_threads(args.threads):
        results = run_experiment(cfg, args.out, plot_figure=not args.no_plot)
    print(report(results))
    print()
    print(f"wrote {', '.join(str(p) for p in results.files.values())} in {results.seconds:.1f} s")
    return 0
