"""SpredLasso: L1 / group-L1 least squares through sparsity by redundancy."""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.base import RegressorMixin, _fit_context
from sklearn.linear_model._base import LinearModel
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import SpredLinearMixin, fit_full_batch, is_stochastic
from ._path import spred_path

logger = logging.getLogger(__name__)

__all__ = ["SpredLasso"]


class SpredLasso(SpredLinearMixin, RegressorMixin, LinearModel):
    """Lasso and group lasso solved by sparsity by redundancy (spred).

    Minimises exactly scikit-learn's Lasso objective::

        (1 / (2 * n_samples)) * ||y - X w - b||^2_2 + alpha * ||w||_1

    or, with ``groups``, the group lasso
    ``(1/(2n)) ||y - Xw - b||^2 + alpha * sum_g weight_g * ||w_g||_2``.
    The intercept ``b`` is not penalised.

    Spred writes ``w = u * v`` (groups: ``w_g = s_g * v_g``) and minimises the
    smooth objective with the ridge ``(alpha/2)(||u||^2 + ||v||^2)``, which has the
    same minimisers as the L1 (group-L1) problem.

    Parameters
    ----------
    alpha : float, default=1.0
        Regularisation strength, with scikit-learn's scaling (``SpredLasso(alpha)``
        and ``sklearn.linear_model.Lasso(alpha)`` solve the same problem).
    fit_intercept : bool, default=True
        Whether to fit an unpenalised intercept (by centring ``X`` and ``y``,
        implicitly for sparse ``X``).
    groups : int, list of int or list of list of int, default=None
        Penalty groups (skglm's forms): an int for contiguous groups of that size,
        a list of group sizes, or a list of lists of feature indices forming a
        partition of the features. ``None`` gives the elementwise L1 (Lasso).
    group_weights : None, "sqrt_size" or array-like of shape (n_groups,), default=None
        Per-group penalty weights: ``None`` for 1 (no weighting), ``"sqrt_size"``
        for ``sqrt(|g|)`` (the statistics convention), or explicit positive weights.
    solver : {"lbfgs", "sgd", "adam", "adagrad"}, default="lbfgs"
        ``"lbfgs"``: full-batch working-set solver, float64 L-BFGS on the spred
        factors followed by an exact polish on the identified support, so that zeros
        are exact and the KKT conditions hold to ``tol``. ``"sgd"``, ``"adam"``,
        ``"adagrad"``: minibatch PyTorch optimizers on the spred factors with
        *coupled* weight decay ``alpha`` (exactly the L1 penalty), for data streamed
        through :meth:`partial_fit`; there, zeros are decided by ``threshold`` plus
        a KKT check with the running average of the minibatch gradients (about the
        last 16,000 samples). ``fit`` with a minibatch solver has the
        full data, so it finishes with the exact polish of the full-batch solver
        (warm-started from the minibatch solution, at most 200 L-BFGS iterations).
    max_iter : int, default=1000
        ``"lbfgs"``: maximum total number of iterations (L-BFGS iterations plus the
        Newton solves counted in ``n_iter_``). Minibatch solvers: maximum number of epochs.
    tol : float, default=1e-4
        ``"lbfgs"``: tolerance on the KKT residual
        ``max_j dist(-grad_j, alpha * d|w_j|) / alpha``, i.e. the largest violation
        of the optimality conditions as a fraction of ``alpha`` (of ``alpha_max``
        when ``alpha = 0``); after a successful polish it is ~1e-15.
        Minibatch solvers: relative objective decrease below which an epoch counts
        as no improvement (5 such epochs stop the training), and the KKT tolerance
        of the final polish in ``fit``.
    batch_size : int, default=None
        Minibatch size of the stochastic solvers (``None``: ``min(256, n_samples)``).
    learning_rate : float, default=0.01
        Step size of the stochastic solvers.
    threshold : "auto" or float, default="auto"
        Stochastic solvers only: coefficients with ``|w_j| <= threshold`` *and*
        ``|grad_j| <= alpha`` are set to exactly zero, with ``grad`` the gradient on
        the full data in ``fit`` (before its polish) and the running average of the
        minibatch gradients in ``partial_fit`` (the only zero rule there). ``"auto"`` uses
        ``1e-3 * max|w|``.
    warm_start : bool, default=False
        Reuse the previous solution as initialisation (full-batch solver).
    random_state : int, RandomState instance or None, default=None
        Seed of the minibatch shuffling (stochastic solvers).
    verbose : int, default=0
        Log solver progress at INFO level to the ``"spred.linear_model"`` loggers (children of ``"spred"``).

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        Coefficients, with exact zeros.
    intercept_ : float
        Intercept.
    n_iter_ : int
        Full batch: L-BFGS iterations on the spred factors plus the Newton solves of
        the exact search where it solved a working set alone (warm starts; problems
        with at most 128 features and no more than samples, which it solves from
        zero). Minibatch: epochs.
    dual_gap_ : float
        Duality gap at the solution (full-batch solver; NaN otherwise).
    stop_crit_ : float
        Final scaled KKT residual (full-batch solver; NaN otherwise).
    alpha_max_ : float
        Smallest alpha giving the all-zero solution on the training data
        (full-batch solver; NaN otherwise).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.linear_model.Lasso : Coordinate-descent solver of the same objective.
    SpredLogisticRegression : L1-penalised logistic regression with spred.
    spred_path : Regularisation path.

    Examples
    --------
    >>> import numpy as np
    >>> from spred.linear_model import SpredLasso
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 10))
    >>> y = X[:, 0] - 2 * X[:, 1] + 0.1 * rng.standard_normal(50)
    >>> model = SpredLasso(alpha=0.1).fit(X, y)
    >>> np.flatnonzero(model.coef_).tolist()
    [0, 1]
    """

    path = staticmethod(spred_path)

    def __init__(self, alpha=1.0, *, fit_intercept=True, groups=None, group_weights=None,
                 solver="lbfgs", max_iter=1000, tol=1e-4, batch_size=None,
                 learning_rate=0.01, threshold="auto", warm_start=False, random_state=None,
                 verbose=0):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.groups = groups
        self.group_weights = group_weights
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.threshold = threshold
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    def _validate_input(self, X, y, reset):
        sparse = ["csr", "csc"] if self.solver == "lbfgs" else False
        return validate_data(self, X, y, reset=reset, accept_sparse=sparse, dtype=np.float64,
                             y_numeric=True, multi_output=False)

    def _warn_alpha_zero(self):
        if self.alpha == 0:
            warnings.warn(
                "With alpha=0, SpredLasso is unregularised least squares and the spred "
                "factorisation has no penalty to balance its factors; use "
                "sklearn.linear_model.LinearRegression instead.",
                UserWarning,
                stacklevel=4,  # _warn_alpha_zero <- fit <- sklearn's _fit_context <- caller
            )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data (sparse only with ``solver="lbfgs"``).
        y : array-like of shape (n_samples,)
            Target values.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        X, y = self._validate_input(X, y, reset=True)  # params validated by _fit_context
        self._warn_alpha_zero()
        if self.solver == "lbfgs":
            init = None
            if self.warm_start and hasattr(self, "coef_") and self.coef_.shape == (X.shape[1],):
                init = self.coef_
            out = fit_full_batch(
                type(self).__name__, X, y, loss="squared", alpha=self.alpha,
                fit_intercept=self.fit_intercept, groups=self.groups,
                group_weights=self.group_weights, tol=self.tol, max_iter=self.max_iter,
                verbose=self.verbose, coef_init=init)
            self.coef_ = np.asarray(out["coef"], dtype=np.float64)
            self.intercept_ = float(out["intercept"])
            self.n_iter_ = int(out["n_iter"])
            self.dual_gap_ = float(out["dual_gap"])
            self.stop_crit_ = float(out["crit"])
            self.alpha_max_ = float(out["alpha_max"])
            return self
        self._minibatch_state = None
        return self._fit_stochastic(X, y, max_epochs=self.max_iter, tol=self.tol)

    def _fit_stochastic(self, X, y, *, max_epochs, tol, streaming=False):
        coef, intercept = self._run_minibatch(X, y, loss="squared", n_outputs=1, max_epochs=max_epochs, tol=tol,
                                              streaming=streaming)
        self.coef_ = coef[:, 0]
        self.intercept_ = float(intercept[0]) if self.fit_intercept else 0.0
        self.dual_gap_ = float("nan")
        return self

    @available_if(is_stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y):
        """Run one epoch of the minibatch solver on ``(X, y)``, continuing the last state.

        Only available for ``solver in ("sgd", "adam", "adagrad")``. Zeros of
        ``coef_`` are decided by ``threshold`` plus a KKT check with the running
        average of the minibatch gradients over about the last 16,000 samples
        (the chunk's own gradient when it has at least that many rows).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A chunk of training data.
        y : array-like of shape (n_samples,)
            Target values of the chunk.

        Returns
        -------
        self : object
            The estimator.
        """
        first = not hasattr(self, "_minibatch_state") or self._minibatch_state is None
        X, y = self._validate_input(X, y, reset=first)
        if first:
            self._warn_alpha_zero()
            self.n_iter_ = 0
        return self._fit_stochastic(X, y, max_epochs=1, tol=None, streaming=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = self.solver == "lbfgs"
        return tags

    def predict(self, X):
        """Predict with the linear model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted values.
        """
        check_is_fitted(self)
        return super().predict(X)
