"""A saturated sigmoid neuron learns slowly with MSE and fast with cross-entropy.

Nielsen's experiment (*Neural Networks and Deep Learning*, ch. 3): one
sigmoid neuron, one input x = 1, label y = 0, badly initialised at w = 2, b = 2, so that
z = w·x + b = 4 and the output o = σ(4) ≈ 0.98 is confidently wrong. It is trained step by
step with plain SGD on that one example, at the same learning rate, twice:

  * MSE on the sigmoid output:  fn.Sequential(fn.Dense(1, 1), fn.Sigmoid()) with fn.MSE();
  * cross-entropy on the logit: fn.Sequential(fn.Dense(1, 1)) with fn.BinaryCrossEntropy()
    (the same neuron: BCE applies the sigmoid inside the loss, stably).

The gradients with respect to z (and so w and b, since x = 1) are

  * fastnn's MSE, L = (o − y)²:               ∂L/∂z = 2 (o − y) σ'(z)
  * cross-entropy, L = −y log o − (1−y) log(1−o): ∂L/∂z = o − y

At z = 4, σ'(z) = 0.018: the saturated neuron's MSE gradient is ~28x smaller than the
cross-entropy one, and MSE crawls until z leaves the flat part of the sigmoid.

Fairness. Both runs use the same rate, lr = 0.15 (Nielsen's). Nielsen's quadratic cost is
(o − y)²/2; fastnn's MSE has no 1/2, so its gradient is twice Nielsen's: MSE at lr 0.15 here
takes the steps Nielsen's quadratic cost takes at lr 0.3. That is a head start for MSE, and
cross-entropy still wins by a wide margin. The full run also shows MSE at lr = 0.075, which
is exactly Nielsen's setting (quadratic cost at 0.15).

We count the SGD steps until the output σ(w + b) drops below 0.1.

    python examples/saturated_neuron.py               # full mode
    python examples/saturated_neuron.py --small       # fewer steps, no Nielsen-exact run
    python examples/saturated_neuron.py --plot out.png
"""
import math

import numpy as np

import fastnn as fn

LR = 0.15             # the same rate for both losses (Nielsen, ch. 3)
W0, B0 = 2.0, 2.0     # the bad initialisation: z = 4, output 0.98
TARGET = 0.1          # count steps until the output drops below this
CHECKPOINTS = (0, 10, 25, 50, 100, 150, 200, 250, 300)
SETTINGS = {False: dict(max_steps=1000, checkpoints=CHECKPOINTS),
            True: dict(max_steps=400, checkpoints=(0, 25, 50, 100, 200))}


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def make_neuron(loss_name):
    """The one neuron, set to w = 2, b = 2. For MSE the sigmoid is a layer; for
    cross-entropy it is inside the loss (BinaryCrossEntropy takes the logit)."""
    if loss_name == "mse":
        model, loss = fn.Sequential(fn.Dense(1, 1), fn.Sigmoid(), dtype="float64", seed=0), fn.MSE()
    else:
        model, loss = fn.Sequential(fn.Dense(1, 1), dtype="float64", seed=0), fn.BinaryCrossEntropy()
    model.load_state_dict({"0.weight": np.array([[W0]]), "0.bias": np.array([B0])})
    return model, loss


def output(model):
    """σ(w·1 + b), read from the parameters (the same for both models)."""
    w, b = (float(p.reshape(-1)[0]) for p in model.parameters())
    return sigmoid(w + b)


def train(loss_name, lr, max_steps, record=None):
    """Plain SGD on (x=1, y=0) until the output is below TARGET (or max_steps).
    Returns (steps needed or None, {step: output} at the record steps, outputs per step)."""
    model, loss = make_neuron(loss_name)
    X, y = np.ones((1, 1)), np.zeros((1, 1))
    opt = fn.SGD(lr=lr)
    record = set(record or ())
    seen, curve, needed = {}, [], None
    for step in range(max_steps + 1):
        o = output(model)
        curve.append(o)
        if step in record:
            seen[step] = o
        if needed is None and o < TARGET:
            needed = step
        if needed is not None and step >= max(record, default=0):
            break
        if step < max_steps:
            model.train_step(X, y, loss=loss, optimizer=opt, threads=1)
    return needed, seen, curve


def first_gradients():
    """∂L/∂w at the bad initialisation, for both losses (from loss_and_grad)."""
    out = {}
    for name in ("mse", "ce"):
        model, loss = make_neuron(name)
        _, grads = model.loss_and_grad(np.ones((1, 1)), np.zeros((1, 1)), loss, threads=1)
        out[name] = float(grads[0].reshape(-1)[0])
    return out


def plot_curves(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, c in curves.items():
        ax.plot(np.arange(len(c)), c, label=label)
    ax.axhline(TARGET, color="gray", ls=":", lw=1, label=f"output {TARGET}")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("output σ(w + b)  (label 0)")
    ax.set_title("One saturated sigmoid neuron (w = b = 2, x = 1, y = 0)", fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(small=False, seed=0, plot=None, verbose=True, threads=None):
    """Run both trainings; print and return ``{"lr", "steps_mse", "steps_ce", "speedup",
    "grad_w_mse", "grad_w_ce", "checkpoints": {step: {"mse", "ce"}}}`` (full mode also
    ``"steps_mse_nielsen_lr"``: MSE at lr 0.075, Nielsen's exact setting). ``seed`` is
    accepted for a uniform interface; the experiment has no randomness. ``threads`` too: one
    example runs on one thread."""
    cfg = SETTINGS[bool(small)]
    cps = cfg["checkpoints"]
    n_mse, seen_mse, c_mse = train("mse", LR, cfg["max_steps"], cps)
    n_ce, seen_ce, c_ce = train("ce", LR, cfg["max_steps"], cps)
    g = first_gradients()
    res = {"lr": LR, "steps_mse": n_mse, "steps_ce": n_ce,
           "speedup": (n_mse / n_ce) if n_mse and n_ce else math.inf,
           "grad_w_mse": g["mse"], "grad_w_ce": g["ce"],
           "checkpoints": {s: {"mse": seen_mse[s], "ce": seen_ce[s]} for s in cps}}
    curves = {f"MSE, lr {LR:g}": c_mse, f"cross-entropy, lr {LR:g}": c_ce}
    if not small:
        n_nielsen, _, c_n = train("mse", LR / 2, 2 * cfg["max_steps"])
        res["steps_mse_nielsen_lr"] = n_nielsen
        curves[f"MSE, lr {LR / 2:g} (Nielsen's exact setting)"] = c_n
    if verbose:
        print(f"one sigmoid neuron, x = 1, y = 0, start w = {W0:g}, b = {B0:g}: "
              f"output σ(4) = {sigmoid(W0 + B0):.4f}; plain SGD, lr = {LR:g} for both losses")
        print(f"gradient dL/dw at the start: MSE {g['mse']:.4f}, cross-entropy {g['ce']:.4f} "
              f"({g['ce'] / g['mse']:.0f}x larger: σ'(4) = {sigmoid(4) * (1 - sigmoid(4)):.4f} "
              "multiplies the MSE gradient)")
        print(f"{'step':>6} {'MSE output':>11} {'CE output':>10}")
        for s in cps:
            print(f"{s:>6d} {seen_mse[s]:>11.4f} {seen_ce[s]:>10.4f}")
        fmt = lambda n: f"{n}" if n is not None else f"> {cfg['max_steps']}"
        print(f"steps until the output < {TARGET}: MSE {fmt(n_mse)}, cross-entropy {fmt(n_ce)} "
              f"-> cross-entropy needs {res['speedup']:.1f}x fewer steps")
        if not small:
            print(f"(fastnn's MSE is (o-y)^2, gradient 2(o-y)σ'; Nielsen's quadratic cost is (o-y)^2/2. "
                  f"MSE at lr {LR / 2:g} = Nielsen's exact setting: {fmt(res['steps_mse_nielsen_lr'])} steps, "
                  f"{res['steps_mse_nielsen_lr'] / n_ce:.1f}x the cross-entropy count)")
    if plot:
        plot_curves(curves, plot)
        if verbose:
            print(f"output curves written to {plot}")
    return res


if __name__ == "__main__":
    from _cli import run_example

    run_example(main, __doc__, plot_help="write the output-per-step curves to this PNG",
                seed_help="accepted for a uniform interface; no randomness here")
