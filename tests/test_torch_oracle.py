"""PyTorch as an independent oracle (skipped when torch is not installed)."""
import numpy as np
import pytest

import fastnn as fn
from conftest import make_targets

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_ACT = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
             "leaky": lambda: torch.nn.LeakyReLU(0.1), "softmax": lambda: torch.nn.Softmax(dim=1)}
FN_ACT = {"relu": fn.ReLU, "tanh": fn.Tanh, "sigmoid": fn.Sigmoid, "leaky": lambda: fn.LeakyReLU(0.1),
          "softmax": fn.Softmax}
pytestmark = pytest.mark.filterwarnings("ignore:reduction. .mean. divides")

TORCH_LOSS = {
    "mse": lambda o, y: F.mse_loss(o, y),
    "bce": lambda o, y: F.binary_cross_entropy_with_logits(o, y),
    "ce": lambda o, y: F.cross_entropy(o, y),
    "nll": lambda o, y: F.nll_loss(o, y),
    "kl": lambda o, y: F.kl_div(o, y, reduction="mean"),
}
FN_LOSS = {"mse": fn.MSE, "bce": fn.BinaryCrossEntropy, "ce": fn.CrossEntropy, "nll": fn.NLLLoss,
           "kl": fn.KLDiv}


def pair(act, dtype):
    m = fn.Sequential(fn.Dense(10, 16), FN_ACT[act](), fn.Dense(16, 12), FN_ACT[act](), fn.Dense(12, 5),
                      dtype=dtype, seed=0)
    tm = torch.nn.Sequential(torch.nn.Linear(10, 16), TORCH_ACT[act](), torch.nn.Linear(16, 12),
                             TORCH_ACT[act](), torch.nn.Linear(12, 5))
    tm = tm.to(torch.float64 if dtype == "float64" else torch.float32)
    tm.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    return m, tm


@pytest.mark.parametrize("act", list(TORCH_ACT))
@pytest.mark.parametrize("loss", list(TORCH_LOSS))
def test_gradients_agree_with_torch(act, loss):
    rng = np.random.default_rng(0)
    m, tm = pair(act, "float64")
    X = rng.normal(size=(33, 10))
    y = make_targets(loss, 33, 5, rng)
    L, grads = m.loss_and_grad(X, y, FN_LOSS[loss]())
    out = tm(torch.tensor(X))
    tl = TORCH_LOSS[loss](out, torch.tensor(y))
    tl.backward()
    assert L == pytest.approx(tl.item(), rel=1e-12)
    for g, p in zip(grads, tm.parameters()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_sgd_momentum_fit_trajectory_agrees_with_torch():
    """A whole fit (unshuffled mini-batches, momentum) against the same loop in torch."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(203, 10)).astype(np.float32)
    y = rng.integers(0, 5, 203)
    m, tm = pair("relu", "float32")
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=3,
          batch_size=32, shuffle=False)
    opt = torch.optim.SGD(tm.parameters(), lr=0.05, momentum=0.9)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    for _ in range(3):
        for i in range(0, 203, 32):
            opt.zero_grad()
            F.cross_entropy(tm(Xt[i:i + 32]), yt[i:i + 32]).backward()
            opt.step()
    for got, want in zip(m.parameters(), tm.parameters()):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-5)
