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
