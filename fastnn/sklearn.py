"""scikit-learn estimators trained by fastnn: ``MLPClassifier`` and ``MLPRegressor``.

They take ``sklearn.neural_network``'s parameters for the stochastic solvers ('sgd' and
'adam') and add ``class_weight``, ``dropout``, ``n_threads`` and ``dtype``. Each wraps a
``fastnn.Sequential`` (``model_``), trained one ``Sequential.fit(epochs=1)`` per epoch.

Needs scikit-learn (``pip install "fastnn-cpu[sklearn]"``); ``import fastnn`` does not import it.
"""
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("fastnn.sklearn needs scikit-learn >= 1.6; install it with "
                      "pip install 'fastnn-cpu[sklearn]'") from e

from . import layers as L
from .data.validation import check_sample_weight
from .losses import MSE, CrossEntropy
from .model import Sequential
from .optim import SGD, Adam

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"relu": L.ReLU, "tanh": L.Tanh, "logistic": L.Sigmoid, "identity": None}
_SOLVERS = ("sgd", "adam")

_PARAMS_DOC = """
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Units of each hidden layer; ``()`` gives a linear model.
    activation : {'relu', 'tanh', 'logistic', 'identity'}, default='relu'
        Hidden activation. Weights start He-normal before ReLU, Glorot-uniform otherwise
        (fastnn's defaults), biases at zero.
    solver : {'adam', 'sgd'}, default='adam'
        fastnn's ``SGD`` or ``Adam`` (L-BFGS is not offered).
    alpha : float, default=1e-4
        L2 penalty on the weights (not the biases), as scikit-learn's: each step adds
        ``alpha / S * W`` to the gradient, ``S`` the batch's size (its sum of sample weights
        when weighted). Passed to ``Sequential.fit`` as
        ``l2 = alpha / (2 * batch_size * mean sample weight)`` (times ``2 / n_outputs_`` in
        the regressor, see Notes), which is scikit-learn's term for every full batch of
        unit weights; the short last batch of an epoch gets the full-batch value, and a
        weighted batch the mean weight instead of its own sum.
    batch_size : int or 'auto', default='auto'
        Examples per step; 'auto' is ``min(200, n_samples)``. Larger values are clipped.
    learning_rate_init : float, default=1e-3
        Step size (constant).
    max_iter : int, default=200
        Most epochs per ``fit``.
    shuffle : bool, default=True
        Reshuffle every epoch (keyed by the seed and the epoch number).
    random_state : int, RandomState or None, default=None
        Draws the model's seed: initialisation, shuffling, dropout and the
        early-stopping split.
    tol : float, default=1e-4
        Improvement that resets the patience counter.
    verbose : bool, default=False
        Print the loss (and validation score) after every epoch.
    warm_start : bool, default=False
        ``fit`` continues from the current weights, ``loss_curve_`` and best scores;
        the optimizer starts afresh, as in scikit-learn.
    momentum : float, default=0.9
        SGD momentum, in [0, 1].
    nesterovs_momentum : bool, default=True
        Nesterov momentum (SGD with ``momentum > 0``).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (stratified in the classifier),
        stop on its score (accuracy / R^2) and restore the best-scoring weights.
    validation_fraction : float, default=0.1
        Held-out share with ``early_stopping``, in (0, 1).
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's moment decays, in [0, 1).
    epsilon : float, default=1e-8
        Adam's epsilon, added (as in ``torch.optim.Adam``) to the bias-corrected
        root of the second moment; scikit-learn adds it before the correction.
    n_iter_no_change : int, default=10
        Training stops once the loss (validation score with ``early_stopping``) has
        failed to improve by ``tol`` for more than this many epochs in a row.
    dropout : float, default=0.0
        Dropout probability after every hidden activation, in [0, 1).
    n_threads : int or None, default=None
        Threads for training and prediction (``None``: ``fastnn.get_num_threads()``,
        negative counts back from all cores). Results do not depend on it.
    dtype : {'auto', 'float32', 'float64'}, default='auto'
        Precision of the weights and of training. 'auto' follows scikit-learn's rule:
        float32 ``X`` trains in float32, any other ``X`` in float64 (fixed by the first
        ``fit``; later calls convert ``X`` to the model's precision)."""


def _is_bool(v):
    return isinstance(v, (bool, np.bool_))


def _real(v, name, lo=None, hi=None, lo_open=False, hi_open=False):
    if _is_bool(v) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    v = float(v)
    bad = not np.isfinite(v) or (
        (lo is not None and (v < lo or (lo_open and v == lo)))
        or (hi is not None and (v > hi or (hi_open and v == hi))))
    if bad:
        rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
               f"{'inf' if hi is None else hi}{')' if hi_open else ']'}")
        raise ValueError(f"{name} must be in {rng}, got {v!r}")
    return v


def _int(v, name, lo):
    if _is_bool(v) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {lo}, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v!r}")
    return int(v)


def _flag(v, name):
    if not _is_bool(v) and not (isinstance(v, numbers.Integral) and v in (0, 1)):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


class _BaseMLP(BaseEstimator):
    """Training loop shared by the classifier and the regressor."""

    def _checked_params(self):
        """Validate the constructor parameters; return the hidden layer sizes as a list."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not _is_bool(sizes):
            sizes = [sizes]
        try:
            if isinstance(sizes, str):
                raise TypeError
            sizes = list(sizes)
        except TypeError:
            raise TypeError("hidden_layer_sizes must be an int or a sequence of ints, "
                            f"got {self.hidden_layer_sizes!r}") from None
        sizes = [_int(s, "hidden_layer_sizes entries", 1) for s in sizes]
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in _SOLVERS:
            hint = "; fastnn trains by mini-batches only" if self.solver == "lbfgs" else ""
            raise ValueError(f"solver must be 'sgd' or 'adam', got {self.solver!r}{hint}")
        _real(self.alpha, "alpha", 0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if isinstance(self.batch_size, str):
                raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}")
            _int(self.batch_size, "batch_size", 1)
        _real(self.learning_rate_init, "learning_rate_init", 0, lo_open=True)
        _int(self.max_iter, "max_iter", 1)
        _flag(self.shuffle, "shuffle")
        _real(self.tol, "tol", 0)
        _flag(self.warm_start, "warm_start")
        _real(self.momentum, "momentum", 0, 1)
        _flag(self.nesterovs_momentum, "nesterovs_momentum")
        _flag(self.early_stopping, "early_stopping")
        _real(self.validation_fraction, "validation_fraction", 0, 1, lo_open=True, hi_open=True)
        _real(self.beta_1, "beta_1", 0, 1, hi_open=True)
        _real(self.beta_2, "beta_2", 0, 1, hi_open=True)
        _real(self.epsilon, "epsilon", 0, lo_open=True)
        _int(self.n_iter_no_change, "n_iter_no_change", 1)
        _real(self.dropout, "dropout", 0, 1, hi_open=True)
        if self.n_threads is not None:
            if _is_bool(self.n_threads) or not isinstance(self.n_threads, numbers.Integral):
                raise TypeError(f"n_threads must be an int or None, got {self.n_threads!r}")
            if self.n_threads == 0:
                raise ValueError("n_threads must be a positive int, a negative one (-1: all cores) "
                                 "or None, got 0")
        if not (isinstance(self.dtype, str) and self.dtype == "auto"):
            try:
                ok = np.dtype(self.dtype) in (np.float32, np.float64)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"dtype must be 'auto', 'float32' or 'float64', got {self.dtype!r}")
        return sizes

    # ------------------------------------------------------------ model
    def _build(self, sizes, n_out, x_dtype):
        dims = [self.n_features_in_] + sizes
        act = _ACTIVATIONS[self.activation]
        layers = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers.append(L.Dense(d_in, d_out))
            layers.append(act() if act is not None else L.Identity())
            if self.dropout > 0:
                layers.append(L.Dropout(float(self.dropout)))
        layers.append(L.Dense(dims[-1], n_out))
        # int random_state gives the same model every time; None draws a fresh seed
        self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        # 'auto': validate_data left float32 X as it was and made anything else float64
        dtype = x_dtype if isinstance(self.dtype, str) and self.dtype == "auto" else self.dtype
        self.model_ = Sequential(layers, dtype=np.dtype(dtype).name, seed=self._seed)
        self.n_outputs_ = n_out
        self.n_layers_ = len(sizes) + 2
        self.out_activation_ = "softmax" if self._classifier else "identity"
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
            self._best_state = self.model_.state_dict()
        else:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf
        if hasattr(self, "_optimizer"):
            del self._optimizer

    @property
    def coefs_(self):
        """Weight matrices, ``coefs_[i]`` of shape (units in, units out): views of ``model_``'s."""
        check_is_fitted(self, "model_")
        return [p.T for name, p in self.model_.named_parameters() if name.endswith("weight")]

    @property
    def intercepts_(self):
        """Bias vectors, ``intercepts_[i]`` of shape (units out,): views of ``model_``'s."""
        check_is_fitted(self, "model_")
        return [p for name, p in self.model_.named_parameters() if name.endswith("bias")]

    # ------------------------------------------------------------ training
    def _optimizer_for(self, incremental, g):
        """The optimizer for this fit; ``g`` is fastnn's gradient over scikit-learn's."""
        # SGD's step is linear in the gradient, so its rate is divided by g; Adam's is
        # invariant to the gradient's scale but for epsilon, which is multiplied by g.
        lr = float(self.learning_rate_init) / (g if self.solver == "sgd" else 1.0)
        eps = float(self.epsilon) * g
        cls = SGD if self.solver == "sgd" else Adam
        opt = getattr(self, "_optimizer", None)
        if incremental and type(opt) is cls:
            # partial_fit carries the optimizer's state over; its settings follow the parameters
            opt.lr = lr
            if cls is Adam:
                opt.betas, opt.eps = (float(self.beta_1), float(self.beta_2)), eps
            return opt
        if cls is SGD:
            m = float(self.momentum)
            opt = SGD(lr=lr, momentum=m, nesterov=bool(self.nesterovs_momentum) and m > 0)
        else:
            opt = Adam(lr=lr, betas=(float(self.beta_1), float(self.beta_2)), eps=eps)
        self._optimizer = opt
        return opt

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        sizes = self._checked_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True; set early_stopping=False")
        first = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y = validate_data(self, X, y, reset=first, dtype=(np.float64, np.float32),
                             **self._validate_y_kwargs())
        sw = self._check_sample_weight(sample_weight, X.shape[0])
        y_t, n_out, ex_w = self._encode_targets(y, first, incremental, classes)
        if ex_w is not None:
            sw = ex_w if sw is None else sw * ex_w
        if sw is not None and not np.any(sw > 0):
            raise ValueError("sample_weight (times class_weight) is zero for every sample; "
                             "at least one sample needs a non-zero weight")
        if first:
            self._build(sizes, n_out, X.dtype)
        elif n_out != self.n_outputs_:
            raise ValueError(f"y has {n_out} outputs but the model was fitted with {self.n_outputs_}; "
                             "pass targets of the same width, or set warm_start=False")
        model = self.model_
        dt = model.dtype
        if self.early_stopping and self.validation_scores_ is None:   # switched on by set_params
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
            self._best_state = model.state_dict()

        X_val = y_val = sw_val = None
        if self.early_stopping:
            parts = train_test_split(X, y_t, *([sw] if sw is not None else []),
                                     test_size=float(self.validation_fraction),
                                     # the model's seed: a warm start scores on the same held-out set
                                     random_state=self._seed,
                                     stratify=y_t if self._classifier else None)
            X, X_val, y_t, y_val = parts[:4]
            if sw is not None:
                sw, sw_val = parts[4], parts[5]
            if X_val.shape[0] < 2:
                raise ValueError("the validation set has fewer than 2 samples; raise "
                                 "validation_fraction or pass more data")
            X_val = np.ascontiguousarray(X_val, dtype=dt)
        n = X.shape[0]
        X = np.ascontiguousarray(X, dtype=dt)
        y_t = np.ascontiguousarray(y_t, dtype=np.int64 if self._classifier else dt)
        if sw is not None:
            sw = np.ascontiguousarray(sw, dtype=dt)
        if self.batch_size == "auto":
            bs = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn(f"batch_size={self.batch_size} is larger than the {n} training samples; "
                              "it is clipped", UserWarning, stacklevel=3)
            bs = min(int(self.batch_size), n)
        n_steps = -(-n // bs)
        w_mean = float(np.mean(sw, dtype=np.float64)) if sw is not None else 1.0
        # fastnn's gradient is grad_scale times scikit-learn's (see the class Notes)
        g = self._grad_scale
        opt = self._optimizer_for(incremental, g)
        # fastnn's l2 is beta ||W||^2 (gradient 2 beta W), scikit-learn's alpha / (2 S) ||W||^2
        l2 = g * float(self.alpha) / (2.0 * bs * w_mean)
        loss = self._loss()
        threads = self.n_threads

        self.n_iter_ = 0
        for _ in range(1 if incremental else int(self.max_iter)):
            hist = model.fit(X, y_t, loss=loss, optimizer=opt, epochs=1, batch_size=bs,
                             shuffle=bool(self.shuffle), threads=threads, sample_weight=sw,
                             l2=l2, l2_bias=False)
            # scikit-learn adds alpha/(2 S) ||W||^2 to each batch's loss and averages over samples
            penalty = 0.0
            if self.alpha > 0:
                sq = sum(float(np.dot(w.ravel(), w.ravel())) for w in self.coefs_)
                penalty = 0.5 * float(self.alpha) * sq * n_steps / (n * w_mean)
            self.loss_ = hist.history["loss"][0] * self._loss_scale + penalty
            self.loss_curve_.append(self.loss_)
            self.n_iter_ += 1
            self.t_ += n
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if self._no_improvement(X_val, y_val, sw_val):
                if self.verbose:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    print(f"{what} did not improve more than tol={self.tol:f} for "
                          f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                break
            if incremental:
                break
        else:   # partial_fit always breaks, so only fit gets here
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                          "the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        if self.early_stopping:
            model.load_state_dict(self._best_state)
        return self

    def _no_improvement(self, X_val, y_val, sw_val):
        """Update the patience counter as scikit-learn does; True when training should stop."""
        tol = float(self.tol)
        if self.early_stopping:
            score = self._val_score(X_val, y_val, sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_state = self.model_.state_dict()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]
        return self._no_improvement_count > self.n_iter_no_change

    @staticmethod
    def _check_sample_weight(sample_weight, n):
        """scikit-learn's shapes (a scalar weighs every sample alike; one dimension), then fastnn's
        check of the values; float64, a copy: the caller's array is never changed."""
        if sample_weight is None:
            return None
        try:
            sw = np.asarray(sample_weight)
        except Exception as e:
            raise TypeError(f"sample_weight must be a 1-D numeric array: {e}") from None
        if sw.ndim == 0:
            sw = np.full(n, sw)
        if sw.dtype.kind in "biuf" and (sw.ndim != 1 or sw.shape[0] != n):
            raise ValueError(f"sample_weight must have shape ({n},), one weight per sample, "
                             f"got shape {sw.shape}")
        return np.array(check_sample_weight(sw, n, np.float64))

    def _forward(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self.model_.forward(X, threads=self.n_threads)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = """Multi-layer perceptron classifier trained by fastnn (softmax output, log-loss).

    Takes ``sklearn.neural_network.MLPClassifier``'s parameters for its stochastic
    solvers, plus ``class_weight``, ``dropout``, ``n_threads`` and ``dtype``. Labels may be
    of any sortable type; a binary problem uses two softmax outputs.

    Parameters
    ----------""" + _PARAMS_DOC + """
    class_weight : dict, 'balanced' or None, default=None
        Weight of each class, multiplied into ``sample_weight``: a dict ``{label: weight}``
        (other classes 1) or 'balanced', ``n_samples / (n_classes * count(class))`` over
        the ``y`` given to ``fit``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    model_ : fastnn.Sequential
        The network; ``model_.predict(X)`` gives the probabilities.
    coefs_, intercepts_ : lists of arrays
        Per layer, weights of shape (in, out) and biases: views of ``model_``'s
        parameters (the transpose of fastnn's ``(out, in)`` weights).
    loss_, loss_curve_ : float, list of float
        Training loss per epoch: mean log-loss plus the L2 term, as scikit-learn reports it
        (the term from the epoch's final weights).
    best_loss_ : float or None
        Lowest ``loss_curve_`` value (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Held-out accuracy per epoch with ``early_stopping``.
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run by the last ``fit`` / ``partial_fit``.
    t_ : int
        Training samples seen.
    n_features_in_, n_outputs_, n_layers_ : int
    out_activation_ : str
        'softmax'.

    Notes
    -----
    Log-loss has the same gradient here as in scikit-learn, so from the same weights and
    order each update is scikit-learn's, but for where epsilon enters and the batches that
    ``alpha`` describes. Binary problems differ: scikit-learn uses one logistic output.
    """
    _classifier = True
    _grad_scale = 1.0
    _loss_scale = 1.0

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, class_weight=None,
                 dropout=0.0, n_threads=None, dtype="auto"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.dropout = dropout
        self.n_threads = n_threads
        self.dtype = dtype

    def _validate_y_kwargs(self):
        return {}

    def _loss(self):
        return CrossEntropy()

    def _encode_targets(self, y, first, incremental, classes):
        """Labels -> indices into classes_; also the per-example class weights (or None)."""
        check_classification_targets(y)
        if first:
            if incremental:
                cls = np.unique(np.asarray(classes))
            else:
                cls = np.unique(y)
            if cls.shape[0] < 2:
                raise ValueError(f"{'classes' if incremental else 'y'} holds only one class "
                                 f"({cls[0]!r}); a classifier needs at least 2 classes")
            self.classes_ = cls
        elif self.warm_start and not incremental:
            if set(np.unique(y)) != set(self.classes_):
                raise ValueError("warm_start needs y to hold the same classes as the previous fit: "
                                 f"had {self.classes_}, y has {np.unique(y)}; set warm_start=False")
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        unknown = self.classes_[idx] != y
        if np.any(unknown):
            raise ValueError(f"y has classes not in classes_ {self.classes_}: "
                             f"{np.unique(np.asarray(y)[unknown])}; pass every class in `classes` "
                             "on the first partial_fit call")
        return idx.astype(np.int64), len(self.classes_), self._example_weights(idx, incremental)

    def _example_weights(self, idx, incremental):
        cw = self.class_weight
        if cw is None:
            return None
        k = len(self.classes_)
        if isinstance(cw, str):
            if cw != "balanced":
                raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")
            if incremental:
                raise ValueError("class_weight='balanced' needs the whole y and is not supported by "
                                 "partial_fit; pass a dict, e.g. from "
                                 "sklearn.utils.class_weight.compute_class_weight")
            counts = np.bincount(idx, minlength=k).astype(np.float64)
            # classes absent from y get no examples, so their weight is never used
            w = np.where(counts > 0, idx.shape[0] / (k * np.maximum(counts, 1)), 1.0)
        elif isinstance(cw, dict):
            w = np.ones(k)
            for label, v in cw.items():
                pos = np.flatnonzero(self.classes_ == label)
                if pos.size == 0:
                    raise ValueError(f"class_weight has the label {label!r}, which is not among the "
                                     f"classes {self.classes_}")
                w[pos[0]] = _real(v, f"class_weight[{label!r}]", 0)
        else:
            raise TypeError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")
        return w[idx]

    def _val_score(self, X, y, sw):
        p = self.model_.forward(X, threads=self.n_threads)
        if not np.all(np.isfinite(p)):
            return np.nan
        return float(accuracy_score(y, p.argmax(axis=1), sample_weight=sw))

    def fit(self, X, y, sample_weight=None):
        """Train on X (n_samples, n_features) and labels y (n_samples,); returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), continuing the weights and the optimizer's state.

        ``classes`` (every label of the whole problem) is required on the first call."""
        if not hasattr(self, "classes_") or not hasattr(self, "model_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit "
                                 "(e.g. classes=np.unique(y_all))")
            self._fit(X, y, sample_weight, incremental=True, classes=classes)
            return self
        if classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={classes!r} differs from classes_ {self.classes_} of the "
                             "first partial_fit call")
        return self._fit(X, y, sample_weight, incremental=True)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        z = self._forward(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict_log_proba(self, X):
        """Log of ``predict_proba``."""
        z = self._forward(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict(self, X):
        """Most probable class of each sample, shape (n_samples,)."""
        z = self._forward(X)
        return self.classes_[z.argmax(axis=1)]


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = """Multi-layer perceptron regressor trained by fastnn (identity output, squared error).

    Takes ``sklearn.neural_network.MLPRegressor``'s parameters for its stochastic solvers,
    plus ``dropout``, ``n_threads`` and ``dtype``. ``y`` may have several columns.

    Parameters
    ----------""" + _PARAMS_DOC + """

    Attributes
    ----------
    model_ : fastnn.Sequential
        The network.
    coefs_, intercepts_ : lists of arrays
        Per layer, weights of shape (in, out) and biases: views of ``model_``'s
        parameters (the transpose of fastnn's ``(out, in)`` weights).
    loss_, loss_curve_ : float, list of float
        Training loss per epoch as scikit-learn reports it: half the mean squared error
        plus the L2 term (from the epoch's final weights).
    best_loss_ : float or None
        Lowest ``loss_curve_`` value (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Held-out R^2 per epoch with ``early_stopping``.
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run by the last ``fit`` / ``partial_fit``.
    t_ : int
        Training samples seen.
    n_features_in_, n_outputs_, n_layers_ : int
    out_activation_ : str
        'identity'.

    Notes
    -----
    fastnn's ``MSE`` is the mean of (o - t)^2 over all elements; its gradient is
    ``2 / n_outputs_`` times scikit-learn's (half squared error summed over outputs; the
    loss it reports averages them). So the SGD rate is ``learning_rate_init * n_outputs_ / 2``
    and Adam's epsilon and the L2 coefficient are scaled by ``2 / n_outputs_``. From the
    same weights and order, each update is then scikit-learn's, but for where epsilon
    enters and the batches that ``alpha`` describes.
    """
    _classifier = False
    _loss_scale = 0.5

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 dropout=0.0, n_threads=None, dtype="auto"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.n_threads = n_threads
        self.dtype = dtype

    @property
    def _grad_scale(self):
        return 2.0 / self.n_outputs_

    def _validate_y_kwargs(self):
        return {"multi_output": True, "y_numeric": True}

    def _loss(self):
        return MSE()

    def _encode_targets(self, y, first, incremental, classes):
        if y.ndim == 2 and y.shape[1] == 1:
            # scikit-learn's rule: a single column is a single output, predicted as 1-D
            warnings.warn("A column-vector y was passed when a 1d array was expected; "
                          "it is raveled", DataConversionWarning)
            y = y[:, 0]
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        return y2, y2.shape[1], None

    def _val_score(self, X, y, sw):
        p = self.model_.forward(X, threads=self.n_threads)
        if not np.all(np.isfinite(p)):
            return np.nan
        return float(r2_score(y, p, sample_weight=sw))

    def fit(self, X, y, sample_weight=None):
        """Train on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_outputs); returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing the weights and the optimizer's state."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predictions, shape (n_samples,) for one output, else (n_samples, n_outputs)."""
        out = self._forward(X).astype(np.float64)
        return out[:, 0] if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
