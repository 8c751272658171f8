"""The command line, run as a user runs it."""
import subprocess
import sys

import numpy as np
import pytest

from fastnn.cli import main
from fastnn.data import load_digits


def test_bundled_digits_are_the_uci_set():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert 0.0 <= X.min() and X.max() == 1.0
    assert np.array_equal(np.unique(y), np.arange(10)) and np.bincount(y).min() >= 170


def test_train_on_bundled_digits_reaches_96_percent(tmp_path):
    # run outside the source tree, so the installed package is the one imported
    out = subprocess.run([sys.executable, "-m", "fastnn", "train"], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    lines = out.stdout.strip().splitlines()
    assert sum(line.startswith("epoch") for line in lines) == 30
    acc = float(lines[-1].split("accuracy:")[1].split()[0])
    assert acc >= 0.96


def test_train_on_csv_and_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    csv = tmp_path / "d.csv"
    with open(csv, "w") as f:
        f.write("a,b,c,d,e,label\n")
        for row, lab in zip(X, y):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{lab}\n")
    assert main(["train", str(csv), "--epochs", "20", "--quiet"]) == 0
    acc = float(capsys.readouterr().out.strip().splitlines()[-1].split("accuracy:")[1].split()[0])
    assert acc > 0.9
    npz = tmp_path / "d.npz"
    np.savez(npz, X=X, y=X[:, 0] * 2.0 + 0.5)
    assert main(["train", str(npz), "--task", "regress", "--epochs", "30", "--quiet", "--lr", "0.01"]) == 0
    assert "held-out MSE" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no such file"):
        main(["train", str(tmp_path / "missing.csv")])
    bad = tmp_path / "bad.npz"
    np.savez(bad, A=np.zeros(3))
    with pytest.raises(SystemExit, match="'X' and 'y'"):
        main(["train", str(bad)])
    nanf = tmp_path / "nan.npz"
    np.savez(nanf, X=np.array([[np.nan, 1.0]] * 10), y=np.arange(10) % 2)
    assert main(["train", str(nanf), "--epochs", "1", "--no-standardize"]) == 2
    assert "NaN" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    assert "OpenMP" in capsys.readouterr().out


# ---------------------------------------------------------------- save, evaluate, predict
def fastnn_cli(*args, cwd, ok=True):
    # a fresh process outside the source tree, as a user runs it
    out = subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], capture_output=True, text=True,
                         cwd=cwd)
    assert (out.returncode == 0) == ok, out.stderr
    return out


def write_csv(path, X, y=None, header=True):
    cols = [f"f{j}" for j in range(X.shape[1])] + (["label"] if y is not None else [])
    with open(path, "w") as f:
        if header:
            f.write(",".join(cols) + "\n")
        for i, row in enumerate(X):
            f.write(",".join(f"{v:.6f}" for v in row) + (f",{y[i]}" if y is not None else "") + "\n")


def shifted_classes(n=400, seed=0):
    # features far from standard scale, so predictions are only right if the saved
    # standardisation is applied; labels 3 and 7, so they must come back as labels
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 4))
    X = Z * [10.0, 0.1, 5.0, 1.0] + [100.0, -3.0, 0.0, 50.0]
    return X, np.where(Z[:, 0] - Z[:, 1] > 0, 7, 3)


def test_train_save_then_predict_and_evaluate(tmp_path):
    X, y = shifted_classes()
    write_csv(tmp_path / "train.csv", X, y)
    write_csv(tmp_path / "labelled.csv", X[:100], y[:100])
    write_csv(tmp_path / "features.csv", X[:100], header=False)
    fastnn_cli("train", "train.csv", "--epochs", "15", "--quiet", "--save", "model.safetensors", cwd=tmp_path)

    pred = fastnn_cli("predict", "model.safetensors", "features.csv", cwd=tmp_path).stdout.split()
    labels = np.array(pred, dtype=int)
    assert labels.shape == (100,) and set(labels) <= {3, 7}
    acc = np.mean(labels == y[:100])
    assert acc >= 0.9
    # the label column is recognised and dropped
    assert fastnn_cli("predict", "model.safetensors", "labelled.csv", cwd=tmp_path).stdout.split() == pred

    proba = np.loadtxt(fastnn_cli("predict", "model.safetensors", "features.csv", "--proba",
                                  cwd=tmp_path).stdout.splitlines(), delimiter=",")
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(np.array([3, 7])[proba.argmax(axis=1)], labels)

    report = fastnn_cli("evaluate", "model.safetensors", "labelled.csv", cwd=tmp_path).stdout
    lines = dict(line.split(": ") for line in report.strip().splitlines())
    assert lines["examples"] == "100" and lines["accuracy"] == f"{acc:.4f}"
    p_true = proba[np.arange(100), (y[:100] == 7).astype(int)]
    assert float(lines["loss"]) == pytest.approx(-np.mean(np.log(p_true)), rel=1e-4, abs=1e-6)


def test_regressor_save_predict_evaluate(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3)) * 4 + 2
    y = X @ [0.5, -1.0, 0.25] + 1.0
    np.savez(tmp_path / "d.npz", X=X, y=y)
    model = str(tmp_path / "reg.safetensors")
    assert main(["train", str(tmp_path / "d.npz"), "--task", "regress", "--epochs", "40", "--lr", "0.01",
                 "--quiet", "--dtype", "float64", "--save", model]) == 0
    assert "saved" in capsys.readouterr().out
    assert main(["predict", model, str(tmp_path / "d.npz")]) == 0
    pred = np.loadtxt(capsys.readouterr().out.splitlines())
    assert pred.shape == (300,) and np.mean((pred - y) ** 2) < 0.1 * np.var(y)
    assert main(["evaluate", model, str(tmp_path / "d.npz")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" not in out
    loss = float(out.split("loss: ")[1].split()[0])
    assert loss == pytest.approx(np.mean((pred - y) ** 2), rel=1e-5)
    with pytest.raises(SystemExit, match="--proba needs a classifier"):
        main(["predict", model, str(tmp_path / "d.npz"), "--proba"])


def test_predict_with_a_model_saved_from_python(tmp_path, capsys):
    import fastnn as fn

    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    m = fn.Sequential(fn.Dense(3, 16), fn.ReLU(), fn.Dense(16, 3), seed=0)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=0.01), epochs=30)
    m.save(tmp_path / "m.safetensors")
    write_csv(tmp_path / "d.csv", X, y, header=False)
    assert main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "d.csv")]) == 0
    pred = np.array(capsys.readouterr().out.split(), dtype=int)     # class indices: no label list saved
    np.testing.assert_array_equal(pred, m.forward(X).argmax(axis=1))
    assert main(["evaluate", str(tmp_path / "m.safetensors"), str(tmp_path / "d.csv")]) == 0
    acc = float(capsys.readouterr().out.split("accuracy: ")[1])
    assert acc == pytest.approx(m.evaluate(X, y)["accuracy"], abs=1e-4)


def test_save_predict_evaluate_errors_are_clear(tmp_path, capsys):
    X, y = shifted_classes(120)
    write_csv(tmp_path / "d.csv", X, y)
    write_csv(tmp_path / "x.csv", X, header=False)
    write_csv(tmp_path / "narrow.csv", X[:, :2], header=False)
    model = str(tmp_path / "m.safetensors")
    assert main(["train", str(tmp_path / "d.csv"), "--save", str(tmp_path / "no" / "m.safetensors")]) == 2
    out = capsys.readouterr()
    assert "does not exist" in out.err and "epoch" not in out.out          # refused before training
    assert main(["train", str(tmp_path / "d.csv"), "--epochs", "2", "--quiet", "--save", model]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit, match="has 2 columns; expected 4 .* or 5"):
        main(["predict", model, str(tmp_path / "narrow.csv")])
    with pytest.raises(SystemExit, match="has 4 columns; expected 5"):
        main(["evaluate", model, str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["predict", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.csv")])
    write_csv(tmp_path / "other.csv", X, np.where(y == 7, 5, 3))
    assert main(["evaluate", model, str(tmp_path / "other.csv")]) == 2
    assert "label 5" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"\x10" * 64)
    assert main(["predict", str(tmp_path / "junk.safetensors"), str(tmp_path / "x.csv")]) == 2
    assert "runs past the end" in capsys.readouterr().err


def test_predict_finds_the_label_column_used_in_training(tmp_path, capsys):
    X, y = shifted_classes(150)
    with open(tmp_path / "d.csv", "w") as f:        # the label first, named
        f.write("kind,a,b,c,d\n")
        for row, lab in zip(X, y):
            f.write(f"{lab}," + ",".join(f"{v:.6f}" for v in row) + "\n")
    write_csv(tmp_path / "x.csv", X, header=False)
    model = str(tmp_path / "m.safetensors")
    assert main(["train", str(tmp_path / "d.csv"), "--target", "kind", "--epochs", "5", "--quiet",
                 "--save", model]) == 0
    capsys.readouterr()
    assert main(["predict", model, str(tmp_path / "d.csv")]) == 0
    with_label = capsys.readouterr().out
    assert main(["predict", model, str(tmp_path / "x.csv")]) == 0
    assert capsys.readouterr().out == with_label and len(with_label.split()) == 150


def test_train_plot_and_diagnostics(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    assert main(["train", "--epochs", "3", "--quiet", "--diagnostics", "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layer 0:" in text and "held-out accuracy" in text
    assert out.stat().st_size > 5000
    assert (tmp_path / "curves-diagnostics.png").stat().st_size > 5000


def test_train_cnn_on_the_digits_then_predict(tmp_path, capsys):
    path = tmp_path / "cnn.safetensors"
    assert main(["train", "--cnn", "--epochs", "6", "--quiet", "--threads", "1", "--save", str(path)]) in (0, None)
    out = capsys.readouterr().out
    assert "image 1x8x8 -> conv 16" in out
    assert float(out.split("held-out accuracy:")[1].split()[0]) > 0.93     # seeds 0..4 at 6 epochs: >= 0.95
    X, y = load_digits()
    np.savetxt(tmp_path / "d.csv", np.c_[X[:50], y[:50]], delimiter=",", fmt="%g")
    main(["predict", str(path), str(tmp_path / "d.csv")])
    pred = np.array(capsys.readouterr().out.split(), dtype=int)
    assert pred.shape == (50,) and np.mean(pred == y[:50]) > 0.9
    with pytest.raises(SystemExit, match=r"C\*H\*W = 64"):
        main(["train", "--cnn", "3", "3", "3", "--epochs", "1"])


def test_train_with_bf16_mixed_precision(capsys):
    assert main(["train", "--epochs", "15", "--quiet", "--precision", "bf16-mixed"]) == 0
    out = capsys.readouterr().out
    assert "precision bf16-mixed" in out
    assert float(out.strip().splitlines()[-1].split("accuracy:")[1].split()[0]) >= 0.95
    # float64 master weights cannot take it: a clear error, exit status 2
    assert main(["train", "--epochs", "1", "--quiet", "--dtype", "float64", "--precision", "bf16-mixed"]) == 2
    assert "precision='bf16-mixed'" in capsys.readouterr().err
