"""pandas input: DataFrames and Series in fit/predict/evaluate, feature names in the estimators."""
import subprocess
import sys

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

import fastnn as fn  # noqa: E402


@pytest.fixture
def frame():
    X, y = fn.data.load_digits()
    X, y = X[:300], y[:300]
    return X, y, pd.DataFrame(X, columns=[f"px{i}" for i in range(64)]), pd.Series(y, name="digit")


def _model(n_out=10):
    return fn.Sequential(fn.Dense(64, 16), fn.ReLU(), fn.Dense(16, n_out), seed=0)


def test_dataframe_and_series_train_as_their_arrays(frame):
    X, y, df, ys = frame
    a, b = _model(), _model()
    kw = dict(loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=2, batch_size=32)
    ha = a.fit(X, y, **kw)
    hb = b.fit(df, ys, validation_data=(df, ys), **kw)
    np.testing.assert_array_equal(ha.history["loss"], hb.history["loss"])
    np.testing.assert_array_equal(a.predict(X), b.predict(df))
    np.testing.assert_array_equal(a.forward(X), b.forward(df))
    assert a.evaluate(X, y) == b.evaluate(df, ys)


def test_dataframe_targets_for_regression(frame):
    X, _, df, _ = frame
    Y = pd.DataFrame({"a": X[:, 10], "b": X[:, 20]})
    a, b = _model(2), _model(2)
    a.fit(X, Y.to_numpy(), loss=fn.MSE(), epochs=1)
    b.fit(df, Y, loss=fn.MSE(), epochs=1, sample_weight=pd.Series(np.ones(len(df))))
    np.testing.assert_array_equal(a.predict(X), b.predict(df))
    one = _model(1)
    one.fit(df, Y["a"], loss=fn.MSE(), epochs=1)          # a Series target for one output
    assert one.evaluate(df, Y["a"])["loss"] >= 0


def test_integer_bool_and_nullable_columns_are_numeric(frame):
    X, y, df, ys = frame
    df = df.copy()
    df["px0"] = (X[:, 0] > 0.5)                      # bool
    df["px1"] = pd.array((X[:, 1] * 16).round().astype(int), dtype="Int64")   # nullable int
    model = _model()
    model.fit(df, ys, loss=fn.CrossEntropy(), epochs=1)
    df.loc[3, "px1"] = pd.NA
    with pytest.raises(ValueError, match="NaN"):
        model.predict(df)


@pytest.mark.parametrize("bad", ["category", "object", "string", "datetime"])
def test_non_numeric_columns_raise_naming_them(frame, bad):
    X, y, df, ys = frame
    df = df.copy()
    col = df["px7"]
    df["px7"] = {"category": col.astype("category"), "object": col.astype(str).astype(object),
                 "string": col.astype("string"),
                 "datetime": pd.to_datetime(col * 1e9)}[bad]
    model = _model()
    for call in (lambda: model.fit(df, ys, loss=fn.CrossEntropy()), lambda: model.forward(df),
                 lambda: model.evaluate(df, ys, loss=fn.CrossEntropy())):
        with pytest.raises(ValueError, match="column 'px7'"):
            call()


def test_import_fastnn_does_not_import_pandas(tmp_path):
    code = "import sys, fastnn; assert 'pandas' not in sys.modules, 'pandas imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


# ---------------------------------------------------------------- scikit-learn wrappers
@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_estimators_record_and_check_feature_names(frame):
    pytest.importorskip("sklearn")
    from fastnn.sklearn import MLPClassifier, MLPRegressor

    X, y, df, ys = frame
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(df, ys)
    assert clf.feature_names_in_.tolist() == list(df.columns)
    with pytest.warns(UserWarning, match="feature names"):   # fitted with names, given none
        np.testing.assert_array_equal(clf.predict_proba(df), clf.predict_proba(X))
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(df[df.columns[::-1]])                 # same names, another order
    # float32 columns train in float32 (dtype='auto'), anything else in float64
    assert clf.model_.dtype == np.float32
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
    reg.fit(df.astype(np.float64), df["px10"])
    assert reg.model_.dtype == np.float64 and reg.predict(df).shape == (len(df),)
    assert not hasattr(MLPClassifier(max_iter=1).fit(X, y), "feature_names_in_")
