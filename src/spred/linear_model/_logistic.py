"""SpredLogisticRegression: L1 / group-L1 logistic regression through spred."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.linear_model._base import LinearClassifierMixin, SparseCoefMixin
from sklearn.utils.extmath import softmax
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import SpredLinearMixin, encode_classes, fit_full_batch, is_stochastic
from ._path import spred_path

logger = logging.getLogger(__name__)

__all__ = ["SpredLogisticRegression"]


class SpredLogisticRegression(SpredLinearMixin, LinearClassifierMixin, SparseCoefMixin, BaseEstimator):
    """L1-penalised (or group-L1) logistic regression solved by spred.

    Minimises the mean cross-entropy plus an L1 penalty::

        (1 / n_samples) * sum_i log_loss(y_i, X_i W' + b) + alpha * ||W||_1

    binary via the sigmoid, multinomial (more than two classes) via the softmax with
    one coefficient row per class and the elementwise ``||W||_1``. With ``groups``
    (binary only) the penalty is ``alpha * sum_g weight_g * ||w_g||_2``. The
    intercept is not penalised.

    **Mapping to scikit-learn.** ``LogisticRegression(C=C, l1_ratio=1.0,
    solver="saga")`` minimises ``C * sum_i log_loss + ||W||_1``; dividing by
    ``n * C`` shows it is this objective with ``alpha = 1 / (n_samples * C)``, i.e.
    ``C = 1 / (n_samples * alpha)``. (``liblinear`` also penalises the intercept, so
    it matches only with ``fit_intercept=False``.)

    Parameters
    ----------
    alpha : float, default=0.01
        Regularisation strength (see the mapping to ``C`` above).
    fit_intercept : bool, default=True
        Whether to fit an unpenalised intercept.
    groups : int, list of int or list of list of int, default=None
        Penalty groups (binary problems only), as in :class:`SpredLasso`.
    group_weights : None, "sqrt_size" or array-like of shape (n_groups,), default=None
        Per-group penalty weights (default 1).
    solver : {"lbfgs", "sgd", "adam", "adagrad"}, default="lbfgs"
        Full-batch working-set L-BFGS on the spred factors with an exact Newton
        polish on the support (``"lbfgs"``), or a minibatch PyTorch optimizer with
        coupled weight decay ``alpha`` (see :class:`SpredLasso`).
    max_iter : int, default=1000
        Maximum iterations (full batch: L-BFGS iterations plus the Newton solves counted
        in ``n_iter_``) or epochs (minibatch).
    tol : float, default=1e-4
        Full batch: tolerance on the KKT residual as a fraction of ``alpha`` (see
        :class:`SpredLasso`); minibatch: relative objective decrease per epoch.
    batch_size : int, default=None
        Minibatch size (``None``: ``min(256, n_samples)``).
    learning_rate : float, default=0.01
        Step size of the stochastic solvers.
    threshold : "auto" or float, default="auto"
        Stochastic solvers: zero threshold (with the KKT check), see
        :class:`SpredLasso`.
    warm_start : bool, default=False
        Reuse the previous solution as initialisation (full-batch solver).
    random_state : int, RandomState instance or None, default=None
        Seed of the minibatch shuffling.
    verbose : int, default=0
        Log solver progress at INFO level to the ``"spred.linear_model"`` loggers (children of ``"spred"``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Coefficients, with exact zeros (one row for binary problems).
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Intercepts.
    n_iter_ : int
        Full batch: L-BFGS iterations on the spred factors plus the Newton solves of
        the exact search where it solved a working set alone (warm starts). Minibatch:
        epochs.
    stop_crit_ : float
        Final scaled KKT residual (full batch; NaN otherwise).
    alpha_max_ : float
        Smallest alpha giving all-zero coefficients (full batch; NaN otherwise).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.linear_model.LogisticRegression : The reference solvers (saga, liblinear).
    SpredLasso : The squared-loss counterpart.

    Examples
    --------
    >>> import numpy as np
    >>> from spred.linear_model import SpredLogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 10))
    >>> y = (X[:, 0] - X[:, 1] > 0).astype(int)
    >>> clf = SpredLogisticRegression(alpha=0.05).fit(X, y)
    >>> np.flatnonzero(clf.coef_[0]).tolist()
    [0, 1]
    """

    path = staticmethod(spred_path)

    def __init__(self, alpha=0.01, *, fit_intercept=True, groups=None, group_weights=None,
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
        X, y = validate_data(self, X, y, reset=reset, accept_sparse=sparse, dtype=np.float64)
        check_classification_targets(y)
        return X, y

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data (sparse only with ``solver="lbfgs"``).
        y : array-like of shape (n_samples,)
            Class labels (at least two classes).

        Returns
        -------
        self : object
            Fitted estimator.
        """
        X, y = self._validate_input(X, y, reset=True)  # params validated by _fit_context
        classes, y_enc = encode_classes(y)
        self.classes_ = classes
        K = classes.size
        loss = "logistic" if K == 2 else "multinomial"
        if self.solver != "lbfgs":
            self._minibatch_state = None
            return self._fit_stochastic(X, y_enc, max_epochs=self.max_iter, tol=self.tol)
        init = b_init = None
        n_rows = 1 if K == 2 else K
        if self.warm_start and hasattr(self, "coef_") and self.coef_.shape == (n_rows, X.shape[1]):
            init = self.coef_.T.ravel()
            b_init = self.intercept_ if self.fit_intercept else None
        out = fit_full_batch(
            type(self).__name__, X, y_enc, loss=loss, alpha=self.alpha,
            fit_intercept=self.fit_intercept, groups=self.groups,
            group_weights=self.group_weights, tol=self.tol, max_iter=self.max_iter,
            verbose=self.verbose, coef_init=init, intercept_init=b_init)
        coef = np.asarray(out["coef"], dtype=np.float64)
        intercept = np.asarray(out["intercept"], dtype=np.float64).ravel()
        if K == 2:
            self.coef_ = coef.reshape(1, -1)
            self.intercept_ = intercept.reshape(1) if self.fit_intercept else np.zeros(1)
        else:
            self.coef_ = coef.T.copy()
            self.intercept_ = (intercept - intercept.mean()) if self.fit_intercept else np.zeros(K)
        self.n_iter_ = int(out["n_iter"])
        self.stop_crit_ = float(out["crit"])
        self.alpha_max_ = float(out["alpha_max"])
        return self

    def _fit_stochastic(self, X, y_enc, *, max_epochs, tol, streaming=False):
        K = self.classes_.size
        coef, intercept = self._run_minibatch(X, y_enc, loss="logistic" if K == 2 else "multinomial",
                                              n_outputs=1 if K == 2 else K, max_epochs=max_epochs, tol=tol,
                                              streaming=streaming)
        self.coef_ = coef.T.copy()
        self.intercept_ = intercept.copy() if self.fit_intercept else np.zeros(coef.shape[1])
        return self

    @available_if(is_stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None):
        """Run one epoch of the minibatch solver on ``(X, y)``, continuing the last state.

        Only available for ``solver in ("sgd", "adam", "adagrad")``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A chunk of training data.
        y : array-like of shape (n_samples,)
            Class labels of the chunk.
        classes : array-like of shape (n_classes,), default=None
            All the classes; required on the first call.

        Returns
        -------
        self : object
            The estimator.
        """
        first = getattr(self, "_minibatch_state", None) is None
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            classes_, _ = encode_classes(np.asarray(classes))
            self.classes_ = classes_
            self.n_iter_ = 0
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(
                f"classes={np.unique(np.asarray(classes)).tolist()} differs from the classes of the "
                f"first call to partial_fit, {self.classes_.tolist()}. Pass the same classes (or "
                "classes=None) on later calls, or call fit to start over."
            )
        X, y = self._validate_input(X, y, reset=first)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(
                f"y contains labels {unknown.tolist()} that are not in classes "
                f"{self.classes_.tolist()}."
            )
        y_enc = np.searchsorted(self.classes_, y)
        return self._fit_stochastic(X, y_enc, max_epochs=1, tol=None, streaming=True)

    def predict_proba(self, X):
        """Class probabilities (sigmoid for binary, softmax for multinomial).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities, in the order of ``classes_``.
        """
        check_is_fitted(self)
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1.0 - p1, p1])
        return softmax(scores, copy=False)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probabilities, in the order of ``classes_``.
        """
        return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = self.solver == "lbfgs"
        return tags
