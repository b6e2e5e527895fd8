"""The optimizer study's masked fine-tune on the CIFAR-10 quick preset, traced: why restarted Adagrad wrecks it.

Trains, as ``spred run optimizers --quick --datasets cifar10`` does (CifarCNN, 2,000 training and
2,000 test images, 6 epochs at batch 32, seed 0, lam updated every 2 steps), the dense model and
the spred model of one optimizer and type at one target, and records:

* per training epoch of the spred run: lam, the fraction of zeros, test accuracy;
* the root mean square of the nonzero weights of every layer: dense, collapsed, and collapsed after
  ``match_scale`` (the study's function-preserving rescale to the dense norms under BatchNorm);
* the fine-tune, started from the collapsed spred model and from the magnitude floor (the dense
  model pruned to the same sparsity), both after ``match_scale``, with every recipe in ``--recipes``
  (``optimizer:lr``; ``study`` is the run's own optimizer at the dense learning rate, the recipe
  this script was written to examine): test accuracy after 0, 1, 4, 16 steps and after each epoch,
  and the relative change ``||dW|| / ||W||`` of the first fully connected layer (the largest,
  and the one BatchNorm does not normalise) after 4 steps and after the first epoch.

The fine-tune loop here is :func:`spred.train.fit`'s with ``freeze_zeros`` (gradients and weights
of the zeros masked after every step), written out so that it can be measured step by step.
Each row is appended to a JSON-lines file.

    SPRED_DATA=<data folder> python benchmarks/finetune_trace.py --optimizer adagrad --lr 0.01 --dense-lr 0.01 \
        [--type unstructured] [--target 0.2] [--recipes study,adam:1e-4] [--epochs 3] [--out finetune_trace.jsonl]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
from torch import nn
from torch.nn import functional as F

import spred
from spred.experiments import _common
from spred.experiments._optimizers_cifar import cifar_factory, load_cifar
from spred.experiments._optimizers_floor import magnitude_prune_to, match_scale
from spred.experiments._optimizers_runs import _TORCH_NAME, _evaluate, _quiet_logs, _Setup, _sparsify_for
from spred.train import TargetSparsity, fit

THRESHOLD, BATCH, MOMENTUM, SEED = 1e-3, 32, 0.9, 0


def _layers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.dim() >= 2}


def _rms_nonzero(model: nn.Module) -> dict[str, float]:
    out = {}
    for name, w in _layers(model).items():
        kept = w.detach()[w.detach() != 0]
        out[name] = float(kept.pow(2).mean().sqrt()) if kept.numel() else 0.0
    return out


def _optimizer(recipe: str, model: nn.Module, run_optimizer: str, dense_lr: float) -> tuple[torch.optim.Optimizer, str]:
    name, lr = (run_optimizer, dense_lr) if recipe == "study" else (recipe.split(":")[0], float(recipe.split(":")[1]))
    params = model.parameters()
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=MOMENTUM), "adam": lambda: torch.optim.Adam(params, lr=lr),
           "adagrad": lambda: torch.optim.Adagrad(params, lr=lr)}[name]()  # fmt: skip
    return opt, f"{name} {lr:g}"


def _finetune(model: nn.Module, train, test, setup: _Setup, recipe: str, run_optimizer: str, dense_lr: float, epochs: int) -> dict:
    model = copy.deepcopy(model)
    keep = {n: p.detach() != 0 for n, p in model.named_parameters() if p.dim() >= 2 and bool((p == 0).any())}
    params = dict(model.named_parameters())
    opt, label = _optimizer(recipe, model, run_optimizer, dense_lr)
    fc_name = max(_layers(model), key=lambda n: params[n].numel())  # the first fully connected layer
    w0 = params[fc_name].detach().clone()
    X, y = train
    g = torch.Generator().manual_seed(SEED)
    record = {"recipe": label, "acc": {0: _evaluate(setup, model, test)}, "fc_layer": fc_name, "fc_rel_change": {}}
    step, n = 0, X.shape[0]
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            with torch.no_grad():
                for name, k in keep.items():
                    params[name].grad.mul_(k)
            opt.step()
            with torch.no_grad():
                for name, k in keep.items():
                    params[name].mul_(k)
            step += 1
            if step in (1, 4, 16):
                record["acc"][step] = _evaluate(setup, model, test)
            if step in (4, n // BATCH + (n % BATCH > 0)):
                record["fc_rel_change"][step] = float((params[fc_name].detach() - w0).norm() / w0.norm())
        record["acc"][f"epoch {epoch}"] = _evaluate(setup, model, test)
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", default="adagrad", choices=("sgd", "adam", "adagrad"))
    p.add_argument("--lr", type=float, default=0.01, help="the spred run's learning rate")
    p.add_argument("--dense-lr", type=float, default=0.01, help="the dense run's learning rate (the study's fine-tune lr)")
    p.add_argument("--type", default="unstructured", choices=("unstructured", "structured"))
    p.add_argument("--target", type=float, default=0.2)
    p.add_argument("--recipes", default="study,adam:1e-4")
    p.add_argument("--epochs", type=int, default=3, help="fine-tune epochs")
    p.add_argument("--out", default="finetune_trace.jsonl")
    a = p.parse_args()
    torch.set_num_threads(1)
    train, test = load_cifar(2000, 2000)
    factory = cifar_factory("cifarcnn", augment=False)
    setup = _Setup(factory, train, test, None, None, 6, BATCH, THRESHOLD, MOMENTUM, F.cross_entropy, (1,), 1, 0.02, None, "trace",
                   structured_groups="channels", lam_update_every=2)  # fmt: skip
    common = {"epochs": 6, "momentum": MOMENTUM, "batch_size": BATCH, "loss_fn": F.cross_entropy, "seed": SEED, "progress": False}
    with _common.torch_seed(SEED):
        dense = factory()
    with _quiet_logs():
        fit(dense, train, optimizer=_TORCH_NAME[a.optimizer], lr=a.dense_lr, **common)
    dense_acc = _evaluate(setup, dense, test)
    with _common.torch_seed(SEED):
        model = factory()
    output_layer = _sparsify_for(setup, model, a.type, 1e-5)
    epochs = []

    def trace(state) -> None:
        epochs.append({"epoch": state.epoch, "lam": statistics.fmean(spred.get_lam(state.model).values()),
                       "zeros": state.history[-1]["sparsity"], "acc": state.history[-1]["val_acc"]})  # fmt: skip

    with _quiet_logs():
        fit(model, train, optimizer=_TORCH_NAME[a.optimizer], lr=a.lr, target_sparsity=TargetSparsity(a.target, threshold=THRESHOLD, update_every=2),
            threshold=THRESHOLD, val_data=test, callbacks=[trace], **common)  # fmt: skip
    reached = spred.sparsity_report(model, threshold=THRESHOLD).sparsified_sparsity  # as the study measures it
    collapsed = spred.collapse(model, threshold=THRESHOLD)
    floor = magnitude_prune_to(dense, reached, a.type == "structured", output_layer)
    rows = {"optimizer": a.optimizer, "type": a.type, "target": a.target, "lr": a.lr, "dense_lr": a.dense_lr, "dense_acc": dense_acc,
            "train": epochs, "collapsed_acc": _evaluate(setup, collapsed, test), "floor_acc": _evaluate(setup, floor, test),
            "rms": {"dense": _rms_nonzero(dense), "collapsed": _rms_nonzero(collapsed), "collapsed_scaled": _rms_nonzero(match_scale(collapsed, dense))},
            "finetune": []}  # fmt: skip
    for recipe in a.recipes.split(","):
        for start, m in (("spred", collapsed), ("floor", floor)):
            r = _finetune(match_scale(m, dense), train, test, setup, recipe, a.optimizer, a.dense_lr, a.epochs)
            rows["finetune"].append({"start": start, **r})
            print(json.dumps(rows["finetune"][-1]), flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(rows) + "\n")
    print(json.dumps({k: v for k, v in rows.items() if k != "finetune"}, indent=1))


if __name__ == "__main__":
    main()
