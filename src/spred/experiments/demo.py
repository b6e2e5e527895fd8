"""``spred demo``: the method at work in about a minute, on data that needs no download.

1. **Lasso**: an ``nn.Linear`` sparsified with default settings and trained by plain
   full-batch SGD lands on the closed-form Lasso solution (orthogonal design), over a
   grid of strengths, and on scikit-learn's ``Lasso`` for the diabetes data.
2. **A network**: an MLP on scikit-learn's bundled 8x8 digits, with group lasso on the
   input pixels (``groups="in"``), group lasso on the hidden neurons (``groups="out"``)
   and plain L1 on the output layer, trained by Adam; then collapsed to exact zeros.

It prints tables and saves ``demo.png`` (coefficient paths, the pixels the network
kept, and the sparsity per layer) in ``--out``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

import spred
from spred.datasets import make_orthogonal_design, make_sparse_target
from spred.experiments._common import full_batches, import_matplotlib, markdown_table, nonnegative_int, num_threads, output_folder, positive_int, quiet_logs
from spred.train import fit

logger = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: results/demo); a new or empty folder, or one spred wrote")
    parser.add_argument("--quick", action="store_true", help="fewer steps (for tests)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    parser.add_argument("--threads", type=positive_int, default=2, metavar="N", help="torch CPU threads (default: 2)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed, an int >= 0 (default: 0)")


def _half_mse(out, target):
    return 0.5 * (out.squeeze(-1) - target).pow(2).mean()


def _fit_linear(x, y, alpha, steps, lr, seed):
    """sparsify an nn.Linear, full-batch SGD (spred's param groups) through spred.train.fit, collapse."""
    torch.manual_seed(seed)
    model = spred.sparsify(nn.Linear(x.shape[1], 1).double(), lam=alpha)
    with quiet_logs("spred.train"):
        data, epochs = full_batches(x, y, steps)  # ``steps`` full-batch steps
        fit(model, data, epochs=epochs, optimizer="sgd", lr=lr, momentum=0.0, loss_fn=_half_mse, progress=False)
    kkt = spred.kkt_residual(model, _half_mse, (x, y), threshold=1e-10)
    return spred.collapse(model, threshold=1e-10), kkt


def lasso_part(quick, seed):
    n, p = 300, 20
    x_np = make_orthogonal_design(n, p, center=True, random_state=[seed, 0])  # X^T X / n = I, centred columns
    v_true = np.zeros(p)
    v_true[:8] = [2.0, -1.5, 1.0, -0.8, 0.6, -0.4, 0.3, -0.2]
    y_np, _ = make_sparse_target(x_np, coef=v_true, noise=0.3, random_state=[seed, 1])
    x, y = torch.as_tensor(x_np), torch.as_tensor(y_np)
    z = x.T @ (y - y.mean()) / n
    # One alpha per support size 1..8 (the true one): midway between consecutive |z_j|,
    # the knots of the path. Near a knot every first-order method crawls (DESIGN.md 2).
    knots = np.sort(z.abs().numpy())[::-1]
    alphas = ((knots[:-1] + knots[1:]) / 2)[: 4 if quick else 8]
    closed, spred_coefs, errors, kkts = [], [], [], []
    for alpha in alphas:
        model, kkt = _fit_linear(x, y, float(alpha), 1000 if quick else 4000, 0.2, seed)
        exact = torch.sign(z) * (z.abs() - alpha).clamp_min(0)
        closed.append(exact.numpy())
        spred_coefs.append(model.weight.detach().squeeze(0).numpy())
        errors.append(float((model.weight.detach().squeeze(0) - exact).abs().max()))
        kkts.append(kkt.max)
    closed, spred_coefs = np.array(closed), np.array(spred_coefs)
    same_support = [bool(np.array_equal(c != 0, s != 0)) for c, s in zip(closed, spred_coefs)]
    rows = [
        {"alpha": f"{a:.4f}", "nonzero (closed form)": int((c != 0).sum()), "nonzero (spred)": int((s != 0).sum()),
         "max |v - v*|": f"{e:.1e}", "same support": "yes" if ok else "NO", "KKT residual": f"{k:.1e}"}
        for a, c, s, e, ok, k in zip(alphas, closed, spred_coefs, errors, same_support, kkts)
    ]  # fmt: skip
    print("\n## 1. Lasso: spred with plain SGD vs the closed form (orthogonal design, n=300, p=20)\n")
    print(markdown_table(rows, [(k, k) for k in rows[0]]))

    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Lasso
    from sklearn.preprocessing import StandardScaler

    data = load_diabetes()
    xd = StandardScaler().fit_transform(data.data)
    yd = data.target - data.target.mean()
    alpha = 2.0
    ref = Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(xd, yd)
    scale = yd.std()  # Lasso(alpha) on (X, y) is Lasso(alpha / s) on (X, y / s), times s
    model, _ = _fit_linear(torch.as_tensor(xd), torch.as_tensor(yd / scale), alpha / scale, 12000, 0.3, seed)
    ours = model.weight.detach().squeeze(0).numpy() * scale
    rows = [{"feature": f, "sklearn Lasso": f"{r:+.4f}", "spred + SGD": f"{o:+.4f}"} for f, r, o in zip(data.feature_names, ref.coef_, ours)]
    print(f"\n## Diabetes (bundled with scikit-learn), alpha={alpha}: sklearn.linear_model.Lasso vs spred\n")
    print(markdown_table(rows, [(k, k) for k in rows[0]]))
    print(f"\nmax |difference| = {np.abs(ref.coef_ - ours).max():.1e}; same zeros: {np.array_equal(ref.coef_ == 0, ours == 0)}")
    return {"alphas": alphas, "closed": closed, "spred": spred_coefs, "same_support": all(same_support), "max_error": max(errors)}


def network_part(quick, seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(digits.data, digits.target, test_size=0.3, random_state=seed, stratify=digits.target)
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = (torch.as_tensor(scaler.transform(a), dtype=torch.float32) for a in (x_tr, x_te))
    y_tr, y_te = torch.as_tensor(y_tr), torch.as_tensor(y_te)

    def make():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    epochs = 20 if quick else 60
    lr, thr = 3e-3, 1e-3

    def train(model):
        with quiet_logs("spred.train"):
            fit(model, (x_tr, y_tr), epochs=epochs, batch_size=64, optimizer="adam", lr=lr, seed=seed, progress=False)
        return model

    def accuracy(model):
        with torch.no_grad():
            return float((model(x_te).argmax(1) == y_te).float().mean())

    t0 = time.perf_counter()
    dense = make()
    train(dense)
    model = make()
    spred.sparsify(model, {"0.weight": 3e-2}, groups="in")  # input pixels (feature selection)
    spred.sparsify(model, {"2.weight": 1e-2}, groups="out")  # hidden neurons
    spred.sparsify(model, {"4.weight": 3e-3})  # elementwise L1 on the output layer
    train(model)
    sparse = spred.collapse(model, threshold=thr)
    elapsed = time.perf_counter() - t0
    report = spred.sparsity_report(model, threshold=thr)  # the groups as penalised ("in": pixels)
    print(f"\n## 2. An MLP on the 8x8 digits (Adam, {epochs} epochs), collapsed at |v| <= {thr:g}\n")
    print(report)
    kept = (sparse[0].weight.abs().sum(0) > 0).numpy()
    print(
        f"\ntest accuracy: dense {accuracy(dense):.3f}, spred collapsed {accuracy(sparse):.3f} "
        f"(uncollapsed {accuracy(model):.3f}); input pixels kept {int(kept.sum())}/64, "
        f"hidden neurons kept {64 - report['2.weight'].zero_groups}/64; {elapsed:.0f} s"
    )
    return {"report": report, "kept": kept, "acc_dense": accuracy(dense), "acc_sparse": accuracy(sparse), "image": digits.images[0]}


def plot(lasso, net, path):
    import_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1.4, 0.8, 1.2])
    alphas = lasso["alphas"]
    for j in range(lasso["closed"].shape[1]):
        line = ax1.plot(alphas, lasso["closed"][:, j], lw=1)[0]
        ax1.plot(alphas, lasso["spred"][:, j], "o", ms=4, mfc="none", color=line.get_color())
    ax1.set_xscale("log")
    ax1.set(xlabel="alpha", ylabel="coefficient", title="Lasso path: closed form (lines), spred + SGD (circles)")
    ax2.imshow(net["kept"].reshape(8, 8), cmap="Greens", vmin=0, vmax=1.4)
    ax2.set(title=f"input pixels kept: {int(net['kept'].sum())}/64", xticks=[], yticks=[])
    rows = [r for r in net["report"].rows if r.name.endswith("weight")]
    ax3.bar([r.name for r in rows], [100 * r.sparsity for r in rows], color="tab:green")
    ax3.set(ylabel="zeros (%)", ylim=(0, 100),
            title=f"digits MLP: {net['report'].compression_ratio:.1f}x compression, "
                  f"acc {net['acc_sparse']:.3f} (dense {net['acc_dense']:.3f})")  # fmt: skip
    fig.savefig(path, dpi=110)
    return path


def run(args) -> int:
    t0 = time.perf_counter()
    with output_folder(args.out, "demo") as folder, num_threads(args.threads):
        lasso = lasso_part(args.quick, args.seed)
        net = network_part(args.quick, args.seed)
        if not args.no_plot:
            plot(lasso, net, folder.file("demo.png"))
    if not args.no_plot:
        print(f"\nfigure: {folder.final('demo.png')}")
    ok = lasso["same_support"] and lasso["max_error"] < 1e-6
    print(f"\nLasso: spred on the closed form at every alpha: {'yes' if ok else 'NO'} (max error {lasso['max_error']:.1e}); "
          f"total {time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0 if ok or args.quick else 1
