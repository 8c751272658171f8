"""fastnn.sklearn: scikit-learn's estimator checks, model selection, and the MLP semantics."""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.metrics import recall_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True)
def one_thread():
    # These are many small fits, where a busy machine makes OpenMP's start-up dominate; results
    # do not depend on the thread count (test_threads_do_not_change_results).
    fn.set_num_threads(1)
    yield
    fn.set_num_threads(None)


# An explicit float32 model rounds to 6e-8 relative; these checks compare two fits, or a prediction
# on a subset of rows with one on all rows, at rtol 1e-7, so one differing rounding (BLAS picks
# kernels by row count) fails them. At the defaults (dtype="auto") the checks' float64 data
# trains in float64, and every check passes.
_FLOAT32_XFAIL = {
    "check_sample_weight_equivalence_on_dense_data":
        "float32: weighted and repeated fits agree to ~2e-7, the check's rtol is 1e-7",
    "check_methods_subset_invariance":
        "float32: BLAS rounds differently for different row counts; the check's rtol is 1e-7",
}


def _expected_failures(est):
    return _FLOAT32_XFAIL if est.dtype == "float32" else {}


@parametrize_with_checks(
    [MLPClassifier(), MLPRegressor(),
     MLPClassifier(dtype="float32", max_iter=100), MLPRegressor(dtype="float32", max_iter=100)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_dtype_auto_follows_the_input():
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    for X_in, want in ((X, np.float64), (X.astype(np.float32), np.float32),
                       (X.astype(np.float16), np.float64), (X.round().astype(np.int64), np.float64)):
        for est in (MLPClassifier(max_iter=2, random_state=0), MLPRegressor(max_iter=2, random_state=0)):
            est.fit(X_in, y)
            assert est.model_.dtype == want and est.coefs_[0].dtype == want
            assert est.predict(X_in).shape == (60,)
    # an explicit dtype wins over the input's
    assert MLPClassifier(max_iter=2, dtype="float32").fit(X, y).model_.dtype == np.float32
    assert MLPClassifier(max_iter=2, dtype="float64").fit(X.astype(np.float32), y).model_.dtype == np.float64
    # warm starts keep the first fit's precision
    clf = MLPClassifier(max_iter=2, warm_start=True, random_state=0).fit(X.astype(np.float32), y)
    clf.fit(X, y)
    assert clf.model_.dtype == np.float32


def test_import_fastnn_does_not_import_sklearn(tmp_path):
    code = ("import sys, fastnn; assert 'sklearn' not in sys.modules; "
            "import fastnn.sklearn; assert 'sklearn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


# ---------------------------------------------------------------- accuracy and model selection
def test_digits_held_out_accuracy():
    X, y = fn.data.load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(max_iter=60, random_state=0).fit(X_tr, y_tr)
    assert clf.score(X_te, y_te) >= 0.95
    assert clf.classes_.tolist() == list(range(10))
    assert clf.n_features_in_ == 64 and clf.n_outputs_ == 10 and clf.n_iter_ >= 1
    assert len(clf.loss_curve_) == clf.n_iter_ and clf.best_loss_ == min(clf.loss_curve_)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    proba = clf.predict_proba(X_te)
    assert proba.shape == (len(X_te), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X_te))


def test_regression_r2_and_multi_output():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(600, 3))
    Y = np.c_[np.sin(X[:, 0]) + X[:, 1] ** 2, X[:, 1] * X[:, 2]]
    X_tr, X_te, Y_tr, Y_te = X[:500], X[500:], Y[:500], Y[500:]
    reg = MLPRegressor(hidden_layer_sizes=(64, 64), learning_rate_init=3e-3, max_iter=300,
                       random_state=0).fit(X_tr, Y_tr[:, 0])
    assert reg.score(X_te, Y_te[:, 0]) > 0.95
    assert reg.predict(X_te).shape == (100,) and reg.n_outputs_ == 1
    multi = MLPRegressor(hidden_layer_sizes=(64, 64), learning_rate_init=3e-3, max_iter=300,
                         random_state=0).fit(X_tr, Y_tr)
    assert multi.n_outputs_ == 2 and multi.predict(X_te).shape == (100, 2)
    assert multi.score(X_te, Y_te) > 0.9


def test_pipeline_and_grid_search():
    X, y = make_classification(n_samples=300, n_features=8, n_informative=5, random_state=0)
    X = X * 50 + 100
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=50, learning_rate_init=0.01,
                                                         random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1],
                               "mlpclassifier__hidden_layer_sizes": [(8,), (16, 16)]}, cv=3, n_jobs=1)
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    assert grid.best_score_ > 0.8
    assert grid.best_estimator_.score(X, y) > 0.85


# ---------------------------------------------------------------- scikit-learn's update rules
def _same_start(ours, sk, X, y):
    """Give a scikit-learn MLP our initial weights (it keeps them with warm_start)."""
    ours.set_params(max_iter=1).fit(X, y)
    ours.model_.reset_parameters()
    sk.set_params(max_iter=1, warm_start=True).fit(X, y)
    for a, b in zip(sk.coefs_ + sk.intercepts_, ours.coefs_ + ours.intercepts_):
        a[...] = b


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["classifier", "regressor", "regressor2"])
def test_updates_equal_scikit_learns(solver, kind):
    # Same start and order, no penalty: the weights must follow scikit-learn's to rounding.
    # This pins the gradient scaling (MSE vs half squared error) and the SGD/Adam mapping.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    y = {"classifier": rng.integers(0, 3, 40), "regressor": X[:, 0] - X[:, 1] ** 2,
         "regressor2": np.c_[X[:, 0] - X[:, 1] ** 2, np.sin(X[:, 2])]}[kind]
    # epsilon is added in different places (see the docstring), so make it negligible here
    kw = dict(hidden_layer_sizes=(7,), solver=solver, alpha=0.0, batch_size=16, shuffle=False,
              learning_rate_init=0.05, momentum=0.9, epsilon=1e-30, n_iter_no_change=100)
    Ours, Sk = (MLPClassifier, SkMLPClassifier) if kind == "classifier" else (MLPRegressor, SkMLPRegressor)
    ours, sk = Ours(dtype="float64", random_state=0, **kw), Sk(random_state=0, **kw)
    _same_start(ours, sk, X, y)
    ours.set_params(max_iter=6, warm_start=True).fit(X, y)
    sk.set_params(max_iter=6).fit(X, y)
    for a, b in zip(sk.coefs_ + sk.intercepts_, ours.coefs_ + ours.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_[1:], sk.loss_curve_[1:], rtol=1e-10)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["classifier", "regressor2"])
def test_alpha_is_scikit_learns_l2_penalty(solver, kind):
    # Equal batches (20 + 20): alpha must act as scikit-learn's alpha / batch_size * W on the
    # weights, and not touch the biases.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 5))
    y = rng.integers(0, 3, 40) if kind == "classifier" else np.c_[X[:, 0] * X[:, 1], X[:, 2]]
    Ours, Sk = (MLPClassifier, SkMLPClassifier) if kind == "classifier" else (MLPRegressor, SkMLPRegressor)
    kw = dict(hidden_layer_sizes=(7,), solver=solver, alpha=0.5, batch_size=20, shuffle=False,
              learning_rate_init=0.05, momentum=0.9, epsilon=1e-30, n_iter_no_change=100)
    ours, sk = Ours(dtype="float64", random_state=0, **kw), Sk(random_state=0, **kw)
    _same_start(ours, sk, X, y)
    ours.set_params(max_iter=8, warm_start=True).fit(X, y)
    sk.set_params(max_iter=8).fit(X, y)
    for a, b in zip(sk.coefs_ + sk.intercepts_, ours.coefs_ + ours.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    # the reported loss includes alpha / (2 batch_size) ||W||^2 as scikit-learn's does
    # (from each epoch's final weights here, from each batch's starting weights there)
    np.testing.assert_allclose(ours.loss_curve_[1:], sk.loss_curve_[1:], rtol=0.05)


# ---------------------------------------------------------------- training control
def test_warm_start_continues_training():
    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    kw = dict(solver="sgd", momentum=0.0, learning_rate_init=0.05, n_iter_no_change=100, random_state=0)
    once = MLPClassifier(max_iter=10, **kw).fit(X, y)
    twice = MLPClassifier(max_iter=5, warm_start=True, **kw).fit(X, y)
    first = [c.copy() for c in twice.coefs_]
    twice.fit(X, y)
    # plain SGD keeps no optimizer state, so 5 + 5 warm-started epochs are the 10 epochs of one fit
    assert twice.n_iter_ == 5 and len(twice.loss_curve_) == 10 and twice.t_ == 2000
    for a, b in zip(once.coefs_, twice.coefs_):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], twice.coefs_[0])
    cold = MLPClassifier(max_iter=5, **kw).fit(X, y)
    cold.fit(X, y)          # without warm_start, fit starts over
    assert len(cold.loss_curve_) == 5
    np.testing.assert_array_equal(cold.coefs_[0], first[0])


def test_partial_fit_equals_fit_epoch_by_epoch():
    X, y = make_classification(n_samples=150, n_features=5, n_classes=3, n_informative=4,
                               n_redundant=0, random_state=0)
    labels = np.array(["ant", "bee", "cat"])[y]
    kw = dict(hidden_layer_sizes=(12,), n_iter_no_change=100, random_state=0)
    full = MLPClassifier(max_iter=4, **kw).fit(X, labels)
    inc = MLPClassifier(**kw)
    with pytest.raises(ValueError, match="classes"):
        inc.partial_fit(X, labels)
    inc.partial_fit(X, labels, classes=["cat", "bee", "ant"])
    for _ in range(3):
        inc.partial_fit(X, labels)
    assert inc.classes_.tolist() == ["ant", "bee", "cat"]
    assert inc.n_iter_ == 1 and len(inc.loss_curve_) == 4
    np.testing.assert_array_equal(inc.predict_proba(X), full.predict_proba(X))
    assert set(inc.predict(X)) <= {"ant", "bee", "cat"}
    with pytest.raises(ValueError, match="classes"):
        inc.partial_fit(X[:5], ["dog"] * 5)
    # a subset of the classes is fine after the first call
    inc.partial_fit(X[labels == "ant"], labels[labels == "ant"])

    reg_full = MLPRegressor(max_iter=3, **kw).fit(X, X[:, 0] + X[:, 1])
    reg_inc = MLPRegressor(**kw)
    for _ in range(3):
        reg_inc.partial_fit(X, X[:, 0] + X[:, 1])
    np.testing.assert_array_equal(reg_inc.predict(X), reg_full.predict(X))


def test_stops_when_loss_stops_improving():
    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    clf = MLPClassifier(max_iter=500, tol=0.5, n_iter_no_change=3, random_state=0).fit(X, y)
    # no epoch improves the loss by 0.5 after the first, so it stops after 1 + 3 + 1 epochs
    assert clf.n_iter_ == 5


def test_early_stopping_keeps_the_best_validation_weights():
    X, y = make_classification(n_samples=400, n_features=10, flip_y=0.2, random_state=0)
    # a tiny tol makes a tie with the best score count as no improvement
    kw = dict(early_stopping=True, validation_fraction=0.25, n_iter_no_change=4, tol=1e-6,
              learning_rate_init=0.05, random_state=0)
    clf = MLPClassifier(max_iter=200, **kw).fit(X, y)
    best = int(np.argmax(clf.validation_scores_))
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_
    assert clf.n_iter_ == best + 1 + 5       # stopped 5 epochs after the best one
    # the same training cut at the best epoch: its final weights are the restored ones
    cut = MLPClassifier(max_iter=best + 1, **kw).fit(X, y)
    for a, b in zip(cut.coefs_ + cut.intercepts_, clf.coefs_ + clf.intercepts_):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="early_stopping"):
        clf.partial_fit(X, y)


# ---------------------------------------------------------------- what scikit-learn's MLP lacks
@pytest.mark.filterwarnings("ignore:class imbalance")
def test_class_weight_balanced_raises_minority_recall():
    X, y = make_classification(n_samples=2000, n_features=8, n_informative=3, weights=[0.95, 0.05],
                               class_sep=0.6, flip_y=0.0, random_state=3)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    kw = dict(hidden_layer_sizes=(16,), max_iter=60, random_state=0)
    plain = MLPClassifier(**kw).fit(X_tr, y_tr)
    balanced = MLPClassifier(class_weight="balanced", **kw).fit(X_tr, y_tr)
    r_plain = recall_score(y_te, plain.predict(X_te))
    r_bal = recall_score(y_te, balanced.predict(X_te))
    assert r_bal > r_plain + 0.2
    # a dict weight of 'balanced''s values is the same training
    counts = np.bincount(y_tr)
    as_dict = {c: len(y_tr) / (2 * counts[c]) for c in (0, 1)}
    same = MLPClassifier(class_weight=as_dict, **kw).fit(X_tr, y_tr)
    np.testing.assert_allclose(same.predict_proba(X_te), balanced.predict_proba(X_te), rtol=1e-5)
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight={7: 2.0}).fit(X_tr, y_tr)
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight="balanced").partial_fit(X_tr, y_tr, classes=[0, 1])


def test_dropout_adds_layers_and_is_off_in_prediction():
    X, y = fn.data.load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), dropout=0.3, max_iter=40, random_state=0)
    clf.fit(X_tr, y_tr)
    drops = [layer for layer in clf.model_.layers if isinstance(layer, fn.Dropout)]
    assert [d.p for d in drops] == [0.3, 0.3]
    np.testing.assert_array_equal(clf.predict_proba(X_te), clf.predict_proba(X_te))
    assert clf.score(X_te, y_te) > 0.93
    plain = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=40, random_state=0).fit(X_tr, y_tr)
    assert not np.array_equal(plain.coefs_[0], clf.coefs_[0])


def test_threads_do_not_change_results():
    X, y = make_classification(n_samples=300, n_features=10, random_state=0)
    a = MLPClassifier(max_iter=5, n_threads=1, random_state=0).fit(X, y)
    b = MLPClassifier(max_iter=5, n_threads=2, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_float32_and_float64():
    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    f32 = MLPClassifier(max_iter=20, random_state=0, dtype="float32").fit(X, y)
    f64 = MLPClassifier(max_iter=20, random_state=0, dtype="float64").fit(X, y)
    assert f32.model_.dtype == np.float32 and f64.model_.dtype == np.float64
    assert f32.coefs_[0].dtype == np.float32 and f64.coefs_[0].dtype == np.float64
    np.testing.assert_allclose(f32.predict_proba(X), f64.predict_proba(X), atol=1e-3)


# ---------------------------------------------------------------- attributes and persistence
def test_coefs_are_sklearn_shaped_views_of_the_model():
    X, y = make_classification(n_samples=100, n_features=6, n_classes=3, n_informative=4,
                               random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(9, 4), activation="tanh", max_iter=5,
                        random_state=0).fit(X, y)
    assert [c.shape for c in clf.coefs_] == [(6, 9), (9, 4), (4, 3)]
    assert [b.shape for b in clf.intercepts_] == [(9,), (4,), (3,)]
    assert clf.n_layers_ == 4 and clf.out_activation_ == "softmax"
    h = X
    for W, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
        h = np.tanh(h @ W + b)
    z = h @ clf.coefs_[-1] + clf.intercepts_[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(X), p / p.sum(axis=1, keepdims=True), rtol=1e-4)
    clf.coefs_[-1][...] = 0          # writes go to the model, as in scikit-learn
    clf.intercepts_[-1][...] = [0, 0, 1]
    assert np.all(clf.predict(X) == 2)


def test_pickle_round_trip_then_keep_training():
    X, y = make_classification(n_samples=120, n_features=5, random_state=0)
    clf = MLPClassifier(max_iter=5, random_state=0).fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    back.partial_fit(X, y)
    clf.partial_fit(X, y)
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    # coefs_ still view the trained buffer after unpickling
    np.testing.assert_array_equal(back.coefs_[0], clf.coefs_[0])


def test_binary_string_labels_and_log_proba():
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    labels = np.where(y == 1, "yes", "no")
    clf = MLPClassifier(max_iter=30, batch_size=20, random_state=0).fit(X, labels)
    assert clf.classes_.tolist() == ["no", "yes"] and clf.n_outputs_ == 2
    assert clf.score(X, labels) > 0.85
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), clf.predict_proba(X), rtol=1e-12)
    with pytest.raises(ValueError, match="class"):
        MLPClassifier().fit(X, np.full(200, "yes"))


def test_verbose_prints_the_loss(capsys):
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    MLPClassifier(max_iter=2, verbose=True, early_stopping=True, random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out
    assert out.count("Validation score: ") == 2


def test_max_iter_warns_convergence():
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier(max_iter=2, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        MLPClassifier(max_iter=2, random_state=0).partial_fit(X, y, classes=[0, 1])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, value, exc", [
    ("solver", "lbfgs", ValueError), ("solver", "rmsprop", ValueError),
    ("activation", "gelu", ValueError), ("hidden_layer_sizes", (10, 0), ValueError),
    ("hidden_layer_sizes", "big", TypeError), ("alpha", -1.0, ValueError),
    ("batch_size", 0, ValueError), ("batch_size", "all", ValueError),
    ("learning_rate_init", 0.0, ValueError), ("max_iter", 0, ValueError),
    ("tol", -1e-3, ValueError), ("momentum", 1.5, ValueError),
    ("validation_fraction", 1.0, ValueError), ("beta_1", 1.0, ValueError),
    ("beta_2", -0.1, ValueError), ("epsilon", 0.0, ValueError),
    ("n_iter_no_change", 0, ValueError), ("dropout", 1.0, ValueError),
    ("dropout", "half", TypeError), ("n_threads", 0, ValueError), ("n_threads", 1.5, TypeError),
    ("dtype", "float16", ValueError), ("class_weight", "auto", ValueError),
    ("class_weight", [1, 2], TypeError), ("shuffle", "yes", TypeError),
    ("alpha", float("nan"), ValueError),
])
def test_bad_parameters_raise_naming_them(name, value, exc):
    X, y = make_classification(n_samples=30, n_features=4, random_state=0)
    est = MLPClassifier(max_iter=1).set_params(**{name: value})
    with pytest.raises(exc, match=name):
        est.fit(X, y)
    if name != "class_weight":
        with pytest.raises(exc, match=name):
            MLPRegressor(max_iter=1).set_params(**{name: value}).fit(X, y.astype(float))


def test_bad_data_raise():
    X, y = make_classification(n_samples=30, n_features=4, random_state=0)
    clf = MLPClassifier(max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :3])
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=np.ones(29))
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=-np.ones(30))
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier(max_iter=1).fit(X, X[:, 0])
    reg = MLPRegressor(max_iter=1, warm_start=True).fit(X, np.c_[y, y].astype(float))
    with pytest.raises(ValueError, match="outputs"):
        reg.fit(X, y.astype(float))
