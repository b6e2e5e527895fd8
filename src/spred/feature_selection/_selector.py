"""SpredSelector: nonlinear feature selection with one spred gate per input feature.

The selector trains a network (linear, MLP, their ensemble, or the user's own)
whose input layer carries a spred group factor per input feature
(``spred.sparsify(..., groups="in")``). With coupled weight decay ``alpha`` on the
factors the network minimises::

    loss(f(x), y) + alpha * sum_j ||W[:, j]||_2  (+ weight_decay/2 * ||other weights||^2)

where ``W[:, j]`` are all the weights leaving input feature ``j`` and the loss is
the mean cross-entropy (classification) or ``mean((f(x) - y)**2) / 2``
(regression). For the linear network this is exactly the (multinomial) group lasso
with scikit-learn's scaling, so ``alpha`` means what it means in
``sklearn.linear_model.Lasso`` / ``LogisticRegression(l1, C=1/(n*alpha))``.

This module is the estimator (scikit-learn plumbing, validation, data preparation,
prediction). The pieces it wires together live next to it: the exactly-k alpha
search in :mod:`._path`, the network trained along the path in :mod:`._trainer`,
stability selection in :mod:`._stability`, the final network and the refit in
:mod:`._refit`, the built-in networks in :mod:`._networks`. Every network is trained
by :func:`spred.train.fit`, the one training loop of spred.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._tags import ClassifierTags, RegressorTags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

import spred.train
from spred._validation import Interval, StrOptions, check_int, check_params, param_error
from spred.feature_selection._data import dense_targets, make_loss, scale_target, standardize, targets, validation_split
from spred.feature_selection._networks import KINDS, make_network, probe_network
from spred.feature_selection._path import PathPoint, Result, _alpha_max, finish, search_k, walk_to
from spred.feature_selection._refit import RefitSettings, final_network, refit
from spred.feature_selection._stability import stability_selection
from spred.feature_selection._trainer import PathTrainer

__all__ = ["PathPoint", "SpredSelector"]

logger = logging.getLogger(__name__)

_WHO = "SpredSelector"


@contextlib.contextmanager
def _quiet(verbose: int):
    """Silence :func:`spred.train.fit`'s per-epoch INFO lines (the "spred.train" logger) unless ``verbose > 1``.

    The selector's own messages (``verbose > 0``) go to this module's logger and pass.
    """
    log = logging.getLogger(spred.train.__name__)
    level = log.level
    if verbose <= 1:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


_INT_PARAMS = {"max_iter": 1, "max_bisect": 0, "refit_iter": 1, "batch_size": 1, "n_iter_no_change": 1, "stability_selection": 0}


def _refuse_bools(est) -> None:
    """Refuse ``True`` / ``False`` for the integer parameters.

    scikit-learn's ``Interval(Integral, ...)`` takes a bool for 1 or 0, so
    ``n_features_to_select=True`` would select one feature and
    ``stability_selection=True`` run one subsample: a bool there is a mistake.
    """
    if isinstance(est.n_features_to_select, bool):
        raise param_error(TypeError, "n_features_to_select", _WHO, "an int >= 1, a float in the range (0, 1) or None", est.n_features_to_select)
    for name, low in _INT_PARAMS.items():
        check_int(getattr(est, name), name, _WHO, low, optional=name == "batch_size")


class SpredSelector(SelectorMixin, BaseEstimator):
    """Select features with a (nonlinear) network whose input layer has one spred gate per feature.

    The network's input layer is sparsified with ``groups="in"``: one scalar per
    input feature multiplies all of that feature's outgoing weights. Training with
    coupled weight decay ``alpha`` on the gates minimises::

        loss(f(x), y) + alpha * sum_j ||W[:, j]||_2 + weight_decay/2 * ||other weights||^2

    (group lasso over the input columns; the loss is the mean cross-entropy for
    classification and ``mean((f(x) - y)**2) / 2`` for regression, so for
    ``model="linear"`` this is scikit-learn's Lasso / L1-logistic scaling). A dropped
    feature's column is written as exact zeros in the fitted network.

    With ``n_features_to_select=k`` the selector walks a warm-started path of
    increasing alpha until at most ``k`` features remain, bisects on alpha to get
    exactly ``k``, and otherwise (ties, plateaus) takes the ``k`` features that leave
    the model last. With ``alpha=`` it trains at that strength (reached by a short
    warm-started path) and keeps the features whose group norm is above
    ``threshold`` times the largest. With ``refit=True`` the network is then trained
    again on the selected features only (the others stay exactly zero), without the
    group penalty, for prediction.

    Parameters
    ----------
    model : {"linear", "mlp", "ensemble"}, nn.Module or callable, default="ensemble"
        ``"linear"``: a linear model (logistic / multinomial / least squares).
        ``"mlp"``: a ReLU network with ``hidden_layer_sizes``. ``"ensemble"``: the
        sum of both, sharing one input layer, so one gate per feature covers the
        linear and the nonlinear part (exact group lasso over all the feature's
        outgoing weights). An ``nn.Module`` is deep-copied at fit; a callable
        ``model(n_features, n_outputs) -> nn.Module`` is called at fit. Its input layer
        (see ``input_layer``) must be an ``nn.Linear`` reading all features and the only
        module that sees the input (the selector trains it on fewer columns as
        features drop out), and its
        output must have ``n_outputs`` columns: 1 for regression and binary
        classification (or 2 for binary with a softmax), the number of classes otherwise.
    n_features_to_select : int or float, default=None
        Number of features to select (an int >= 1) or fraction of them (a float in
        (0, 1)). None with ``alpha=None`` selects half of the features.
    alpha : float, default=None
        Fixed penalty strength instead of a number of features (exclusive with
        ``n_features_to_select``).
    task : {"classification", "regression"}, default="classification"
        Whether the selector is a classifier (``predict``, ``predict_proba``, accuracy
        as ``score``) or a regressor (R^2 as ``score``).
    hidden_layer_sizes : tuple of int, default=(32,)
        Hidden layers of the built-in ``"mlp"`` and ``"ensemble"`` networks.
    weight_decay : float, default=1e-3
        L2 penalty (coupled weight decay) on the weights that are not input gates
        (hidden and output layers). Needed for the MLP: without it the network can
        shrink its input layer for free by growing the next one.
    input_layer : str, default=None
        Name of the layer that reads the input in a user ``model``; by default the
        only ``nn.Linear`` with ``in_features == n_features``.
    standardize : bool, default=True
        Centre and scale every feature to unit variance (on the training data) before
        the network sees it; alpha then does not depend on the units.
    alpha_min_ratio : float, default=1e-3
        The path starts (dense) at ``alpha_min_ratio * alpha_max_``.
    max_iter : int, default=200
        Epochs per point of the path (the first point gets twice as many).
    max_bisect : int, default=5
        Bisection steps on alpha to reach exactly ``k`` features.
    threshold : float, default=1e-3
        A feature counts as selected when its group norm exceeds ``threshold`` times
        the largest group norm (Adam leaves dropped gates near, not at, zero).
    refit : bool, default=True
        Retrain the network on the selected features without the group penalty
        (``weight_decay`` on all weights) for prediction.
    refit_iter : int, default=200
        Epochs of the refit.
    lr : float, default=1e-2
        Adam's learning rate (cosine-decayed to 1% within each path point).
    batch_size : int, default=None
        Minibatch size; None means ``min(n_samples, 256)``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (per class): its loss is
        recorded along the path and the refit stops when it has not improved for
        ``n_iter_no_change`` epochs (keeping the best weights). The held-out samples
        take no part in the selection.
    validation_fraction : float, default=0.1
        Fraction of each class held out when ``early_stopping=True``.
    n_iter_no_change : int, default=10
        Patience (epochs) of the refit's early stopping.
    stability_selection : int, default=0
        If > 0, the number of subsamples (of ``subsample_fraction`` of the samples,
        without replacement, per class) on which the selection is repeated; the
        support is then the ``k`` features selected most often (or, with ``alpha``,
        those selected in at least half of the subsamples) and the network is trained
        on them with ``refit``.
    subsample_fraction : float, default=0.5
        Size of each stability-selection subsample, as a fraction of the training data.
    device : str or torch.device, default="cpu"
        Where to train (e.g. ``"cuda"``). The fitted network is kept on the CPU.
    warm_start : bool, default=False
        With ``n_features_to_select``, continue the previous path from its state just
        above the new ``k`` when the new ``k`` is not larger (e.g. fit k=50, then
        ``set_params(n_features_to_select=10)`` and fit again on the same data).
    random_state : int, RandomState instance or None, default=None
        Seeds the network's initialisation, the minibatch order, the validation split
        and the subsamples.
    verbose : int, default=0
        > 0: a progress bar over path points and INFO messages on the
        ``spred.feature_selection`` loggers (children of ``"spred"``). > 1: also the
        per-epoch lines of :func:`spred.train.fit` (the ``spred.train`` logger is set to
        WARNING during ``fit`` otherwise, and restored).

    Attributes
    ----------
    support_ : ndarray of bool, shape (n_features_in_,)
        The selected features.
    feature_importances_ : ndarray of shape (n_features_in_,)
        The largest alpha on the path at which each feature was still selected (the
        strength at which it leaves the model; 0 if never selected). The selected
        features share the last alpha of the path. With stability selection: the mean
        over subsamples of that strength divided by the subsample's alpha_max.
    selection_frequencies_ : ndarray of shape (n_features_in_,)
        Only with ``stability_selection``: fraction of subsamples selecting each feature.
    alpha_ : float
        The alpha at which the support was chosen (NaN with stability selection).
    alpha_max_ : float
        Smallest alpha at which the linear group lasso drops every feature (the scale
        the path starts from).
    path_ : list of PathPoint
        Every point trained, in order.
    model_ : nn.Module
        The fitted network (float64, CPU, no spred factors): the columns of the
        dropped features in its input layer are exactly zero.
    input_layer_ : str
        Name of the network's input layer.
    mean_, scale_ : ndarray of shape (n_features_in_,)
        Standardisation (zeros and ones with ``standardize=False``).
    classes_ : ndarray
        Class labels (classification).
    n_iter_ : int
        Total training epochs.
    n_features_in_ : int
    feature_names_in_ : ndarray of str

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from spred.feature_selection import SpredSelector
    >>> X, y = make_classification(n_samples=100, n_features=30, n_informative=3, random_state=0)
    >>> sel = SpredSelector("linear", n_features_to_select=3, max_iter=30, random_state=0).fit(X, y)
    >>> int(sel.get_support().sum())
    3
    """

    _parameter_constraints: dict = {
        "model": [StrOptions(set(KINDS)), callable],
        "n_features_to_select": [Interval(Integral, 1, None, closed="left"), Interval(Real, 0, 1, closed="neither"), None],
        "alpha": [Interval(Real, 0, None, closed="left"), None],
        "task": [StrOptions({"classification", "regression"})],
        "hidden_layer_sizes": ["array-like"],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "input_layer": [str, None],
        "standardize": ["boolean"],
        "alpha_min_ratio": [Interval(Real, 0, 1, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "max_bisect": [Interval(Integral, 0, None, closed="left")],
        "threshold": [Interval(Real, 0, 1, closed="left")],
        "refit": ["boolean"],
        "refit_iter": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "stability_selection": [Interval(Integral, 0, None, closed="left")],
        "subsample_fraction": [Interval(Real, 0, 1, closed="neither")],
        "device": [str, torch.device],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        model="ensemble",
        *,
        n_features_to_select=None,
        alpha=None,
        task="classification",
        hidden_layer_sizes=(32,),
        weight_decay=1e-3,
        input_layer=None,
        standardize=True,
        alpha_min_ratio=1e-3,
        max_iter=200,
        max_bisect=5,
        threshold=1e-3,
        refit=True,
        refit_iter=200,
        lr=1e-2,
        batch_size=None,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        stability_selection=0,
        subsample_fraction=0.5,
        device="cpu",
        warm_start=False,
        random_state=None,
        verbose=0,
    ):
        self.model = model
        self.n_features_to_select = n_features_to_select
        self.alpha = alpha
        self.task = task
        self.hidden_layer_sizes = hidden_layer_sizes
        self.weight_decay = weight_decay
        self.input_layer = input_layer
        self.standardize = standardize
        self.alpha_min_ratio = alpha_min_ratio
        self.max_iter = max_iter
        self.max_bisect = max_bisect
        self.threshold = threshold
        self.refit = refit
        self.refit_iter = refit_iter
        self.lr = lr
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.stability_selection = stability_selection
        self.subsample_fraction = subsample_fraction
        self.device = device
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ sklearn plumbing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        if self.task == "regression":
            tags.estimator_type = "regressor"
            tags.regressor_tags = RegressorTags()
        else:
            tags.estimator_type = "classifier"
            tags.classifier_tags = ClassifierTags()
        tags.non_deterministic = False
        return tags

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    # ------------------------------------------------------------------ validation

    def _check_settings(self) -> tuple[tuple[int, ...], torch.device]:
        check_params(self)
        _refuse_bools(self)
        if self.alpha is not None and self.n_features_to_select is not None:
            raise ValueError(
                f"SpredSelector got both n_features_to_select={self.n_features_to_select!r} and alpha={self.alpha!r}; "
                "set only one (a number of features, or a fixed penalty strength)."
            )
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, (Integral, str)) or not all(isinstance(h, Integral) and not isinstance(h, bool) for h in hidden):
            # the one message format, without param_error's "of type tuple": the type of an element is wrong
            raise TypeError(f"The 'hidden_layer_sizes' parameter of SpredSelector must be a tuple of ints. Got {hidden!r} instead.")
        hidden = tuple(int(h) for h in hidden)
        if self.model in ("mlp", "ensemble") and (not hidden or min(hidden) < 1):
            raise param_error(ValueError, "hidden_layer_sizes", _WHO, f"a non-empty tuple of positive ints for model={self.model!r}", self.hidden_layer_sizes)
        if self.stability_selection and not self.refit:
            raise ValueError(
                f"stability_selection={self.stability_selection} needs refit=True: the selected features come from "
                "subsamples, so the prediction model must be trained on them afterwards."
            )
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise param_error(ValueError, "device", _WHO, "the name of a torch device ('cpu', 'cuda', 'cuda:1', ...)", self.device) from exc
        return hidden, device

    def _resolve_k(self, n_features: int) -> int | None:
        """The number of features to select (None for a fixed alpha)."""
        k = None
        if self.alpha is None:
            if self.n_features_to_select is None:
                k = max(1, n_features // 2)
            elif isinstance(self.n_features_to_select, Integral):
                k = int(self.n_features_to_select)
                if k > n_features:
                    raise ValueError(
                        f"The 'n_features_to_select' parameter of SpredSelector is {k}, more than the {n_features} features of X."
                    )
            else:
                k = max(1, int(round(self.n_features_to_select * n_features)))
        return k

    # ------------------------------------------------------------------ fit

    def fit(self, X, y):
        """Select features on ``(X, y)`` and fit the prediction network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (``task="classification"``, at least 2 classes) or real
            targets (``task="regression"``, not constant).

        Returns
        -------
        self : SpredSelector
        """
        hidden, device = self._check_settings()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=self.task == "regression")
        n, p = X.shape
        k = self._resolve_k(p)
        codes = self._encode_classes(y)
        rng = check_random_state(self.random_state)
        Xs, self.mean_, self.scale_ = standardize(X, self.standardize)
        train_idx, val_idx = validation_split(codes, n, self.validation_fraction, rng) if self.early_stopping else (np.arange(n), None)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        self.input_layer_, n_out, loss_kind = probe_network(self.model, p, hidden, 0 if codes is None else self.classes_.size, self.input_layer, seed)
        if codes is None:  # regression: the standardised target; alphas are reported times its scale (unit)
            y, self.y_mean_, self.y_scale_ = scale_target(y, train_idx, self.early_stopping)
        unit = 1.0 if codes is not None else self.y_scale_
        Y = targets(loss_kind, codes, y)
        self.alpha_max_ = unit * _alpha_max(Xs[train_idx].astype(np.float64), dense_targets(Y[train_idx], n_out))
        X_t, Y_t = torch.as_tensor(Xs), torch.as_tensor(Y)
        val = None if val_idx is None else (X_t[val_idx], Y_t[val_idx])
        settings = dict(hidden=hidden, n_out=n_out, loss_fn=make_loss(loss_kind), device=device, unit=unit)
        with _quiet(self.verbose):
            res = self._selection(X_t, Y_t, val, codes, train_idx, k, rng, seed, settings)
            net = final_network(res, lambda: make_network(self.model, p, n_out, hidden, seed), self.input_layer_, self.support_)
            if self.refit:
                net = self._refit(net, X_t[train_idx], Y_t[train_idx], val, settings, seed)
        self.model_ = net.double().cpu().eval()
        if self.support_.sum() == 0:
            warnings.warn(
                f"SpredSelector selected no feature (alpha={self.alpha_:.3g} >= the strength that drops all of them); "
                "lower alpha or ask for n_features_to_select.",
                UserWarning,
                stacklevel=2,
            )
        return self

    def _encode_classes(self, y) -> np.ndarray | None:
        """Class codes 0..C-1 (``classes_`` set), or None for regression."""
        if self.task != "classification":
            return None
        check_classification_targets(y)
        enc = LabelEncoder().fit(y)
        self.classes_ = enc.classes_
        if self.classes_.size < 2:
            raise ValueError(f"SpredSelector needs at least 2 classes in y; got 1 class ({self.classes_.tolist()}).")
        return enc.transform(y)

    def _selection(self, X_t, Y_t, val, codes, train_idx, k, rng, seed: int, settings: dict) -> Result:
        """One path (or stability selection) on the training rows; sets support_, path_, alpha_, importances."""
        p = X_t.shape[1]
        if self.stability_selection:
            select = lambda idx, s, b: self._select(X_t[idx], Y_t[idx], None, k, s, settings, b)  # noqa: E731
            res, self.selection_frequencies_ = stability_selection(
                select, p, train_idx, codes, k, int(self.stability_selection), float(self.subsample_fraction), rng
            )
            self.alpha_, self._warm = math.nan, None
        else:
            res = self._select(X_t[train_idx], Y_t[train_idx], val, k, seed, settings, None, warm=self._warm_state(p, k))
            self.alpha_ = res.alpha
            self._warm = None if k is None else {
                "n_features": p, "resume": res.resume, "points": res.points, "importance": res.importance, "last_norm": res.last_norm,
            }  # fmt: skip
        self.support_, self.path_, self.n_iter_, self.feature_importances_ = res.support, res.points, res.n_epochs, res.importance
        return res

    def _warm_state(self, p: int, k: int | None) -> dict | None:
        warm = getattr(self, "_warm", None)
        if not self.warm_start or warm is None or k is None or warm["n_features"] != p or warm["resume"] is None:
            return None
        if warm["resume"]["count"] < k:
            return None
        return warm

    def _select(self, X_t, Y_t, val, k, seed, settings, subsample, warm=None) -> Result:
        """One selection (one path) on the given rows."""
        p = X_t.shape[1]
        net = make_network(self.model, p, settings["n_out"], settings["hidden"], seed)
        alpha_max = _alpha_max(X_t.numpy().astype(np.float64), dense_targets(Y_t.numpy(), settings["n_out"]))
        alpha_start = self.alpha_min_ratio * (alpha_max if alpha_max > 0 else 1.0)
        batch = self.batch_size or min(len(X_t), 256)
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(desc="SpredSelector path" + ("" if subsample is None else f" (subsample {subsample})"), unit="point", leave=False)
        path = PathTrainer(
            net, self.input_layer_, settings["loss_fn"], X_t, Y_t, val, float(self.lr), float(self.weight_decay), int(self.max_iter),
            int(batch), float(self.threshold), seed, settings["device"], subsample, bar, settings["unit"],
        )  # fmt: skip
        try:
            if k is None:
                res = walk_to(path, float(self.alpha) / settings["unit"], alpha_start)
            elif k >= p:
                path.run(alpha_start, "warmup", 2 * path.epochs)
                res = finish(path, np.ones(p, dtype=bool), alpha_start, None)
            elif warm is not None:
                path.points = list(warm["points"])
                path.importance, path.last_norm = warm["importance"].copy(), warm["last_norm"].copy()
                res = search_k(path, k, alpha_start, int(self.max_bisect), resume=warm["resume"])
            else:
                res = search_k(path, k, alpha_start, int(self.max_bisect))
        finally:
            if bar is not None:
                bar.close()
        res.alpha_max = alpha_max * settings["unit"]
        if self.verbose:
            logger.info("SpredSelector: %d features at alpha=%.4g after %d path points", int(res.support.sum()), res.alpha, len(res.points))
        return res

    def _refit(self, net: nn.Module, X_t, Y_t, val, settings: dict, seed: int) -> nn.Module:
        """Train ``net`` on the selected columns without the group penalty (see :func:`._refit.refit`)."""
        how = RefitSettings(
            int(self.refit_iter), float(self.lr), float(self.weight_decay), self.batch_size or min(len(X_t), 256),
            int(self.n_iter_no_change), seed, settings["device"],
        )  # fmt: skip
        if self.support_.any():
            self.n_iter_ += int(self.refit_iter)
        return refit(net, self.input_layer_, self.support_, (X_t, Y_t), val, settings["loss_fn"], how)

    # ------------------------------------------------------------------ predict

    def _forward(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Xs = torch.as_tensor((X - self.mean_) / self.scale_, dtype=torch.float64)
        with torch.no_grad():
            out = self.model_(Xs)
        return out.reshape(len(X), -1).numpy()

    def _is_classifier(self) -> bool:
        return self.task == "classification"

    def predict(self, X):
        """Predicted class labels (classification) or values (regression) of the fitted network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        out = self._forward(X)
        if self.task == "regression":
            return out[:, 0] * self.y_scale_ + self.y_mean_
        idx = (out[:, 0] > 0).astype(int) if out.shape[1] == 1 else out.argmax(axis=1)
        return self.classes_[idx]

    @available_if(_is_classifier)
    def predict_proba(self, X):
        """Class probabilities of the fitted network (classification only).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        out = torch.as_tensor(self._forward(X))
        if out.shape[1] == 1:
            p1 = torch.sigmoid(out[:, 0])
            return torch.stack([1 - p1, p1], dim=1).numpy()
        return torch.softmax(out, dim=1).numpy()

    def score(self, X, y, sample_weight=None):
        """Accuracy (classification) or R^2 (regression) of :meth:`predict` on ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        float
        """
        if self.task == "regression":
            return float(r2_score(y, self.predict(X), sample_weight=sample_weight))
        return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))
