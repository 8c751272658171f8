"""Naive float64 NumPy reference of the network, its losses and its gradients,
written from the formulas (SEED-NOTES §1): z = W a + b, a = f(z),
delta_L = dL/da_L * f'(z_L), delta_l = (W_{l+1}^T delta_{l+1}) * f'(z_l)."""
import numpy as np


def act(z, name, slope=0.01):
    if name == "identity":
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky":
        return np.where(z > 0, z, slope * z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise ValueError(name)


def act_backward(z, a, g, name, slope=0.01):
    """dL/dz from dL/da."""
    if name == "identity":
        return g
    if name == "relu":
        return g * (z > 0)
    if name == "leaky":
        return g * np.where(z > 0, 1.0, slope)
    if name == "sigmoid":
        return g * a * (1 - a)
    if name == "tanh":
        return g * (1 - a ** 2)
    if name == "softmax":
        return a * (g - (g * a).sum(axis=1, keepdims=True))
    raise ValueError(name)


def logsumexp(x):
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def loss(name, out, y, reduction="mean", weight=None, pos_weight=None):
    """(loss, dloss/dout) in float64, PyTorch's definitions."""
    out = np.asarray(out, dtype=np.float64)
    N, C = out.shape
    if name == "mse":
        d = out - y
        per = (d ** 2)
        L, G = per.sum(), 2 * d
        norm = N * C
    elif name == "bce":
        pw = np.ones(C) if pos_weight is None else np.broadcast_to(pos_weight, (C,))
        sig = 1 / (1 + np.exp(-out))
        per = -(pw * y * np.log(sig) + (1 - y) * np.log(1 - sig))
        L = per.sum()
        G = -(pw * y * (1 - sig)) + (1 - y) * sig
        norm = N * C
    elif name in ("ce", "nll"):
        if name == "ce":
            lse = logsumexp(out)
            if y.ndim == 1:
                per = lse - out[np.arange(N), y]
                G = act(out, "softmax")
                G[np.arange(N), y] -= 1
            else:
                per = (y * (lse[:, None] - out)).sum(axis=1)
                G = act(out, "softmax") * y.sum(axis=1, keepdims=True) - y
        else:
            per = -out[np.arange(N), y]
            G = np.zeros_like(out)
            G[np.arange(N), y] = -1
        w = np.ones(N) if weight is None or y.ndim != 1 else weight[y]
        L = (per * w).sum()
        G = G * w[:, None]
        norm = w.sum()
    elif name == "kl":
        with np.errstate(divide="ignore", invalid="ignore"):
            per = np.where(y > 0, y * (np.log(np.where(y > 0, y, 1)) - out), 0.0)
        L, G = per.sum(), -y
        norm = {"mean": N * C, "batchmean": N, "sum": 1}[reduction]
        return L / norm, G / norm
    else:
        raise ValueError(name)
    if reduction == "sum":
        return L, G
    return L / norm, G / norm


def model_spec(model):
    """[(W, b, act name, slope)] in float64 from a fastnn Sequential."""
    import fastnn as fn
    names = {fn.ReLU: "relu", fn.LeakyReLU: "leaky", fn.Sigmoid: "sigmoid", fn.Tanh: "tanh",
             fn.Softmax: "softmax"}
    spec = []
    for _, d, a in model._plan.dense:
        spec.append((d.weight.astype(np.float64), None if d.bias is None else d.bias.astype(np.float64),
                     names[type(a)] if a is not None else "identity",
                     getattr(a, "negative_slope", 0.01)))
    return spec


def _same(x):
    return x


def forward(spec, X, operand=_same):
    """Pre-activations and activations; ``operand`` maps each operand of a product (an input row
    block, a weight matrix) to the value the product reads (e.g. rounded to bfloat16)."""
    a = np.asarray(X, dtype=np.float64)
    zs, acts = [], [a]
    for W, b, name, slope in spec:
        z = operand(a) @ operand(W).T + (0 if b is None else b)
        a = act(z, name, slope)
        zs.append(z)
        acts.append(a)
    return zs, acts


def loss_and_grad(spec, X, y, name, operand=_same, **kw):
    """Loss and gradients (weight, bias per layer); ``operand`` as in ``forward``, applied to the
    operands of the backward products too (deltas, weights, activations)."""
    zs, acts = forward(spec, X, operand)
    L, g = loss(name, acts[-1], y, **kw)
    grads = [None] * (2 * len(spec))
    for l in range(len(spec) - 1, -1, -1):
        W, b, an, slope = spec[l]
        delta = act_backward(zs[l], acts[l + 1], g, an, slope)
        d, a = operand(delta), operand(acts[l])
        gW = np.zeros_like(W)
        for i in range(delta.shape[0]):            # the per-example updates, then their sum
            gW += np.outer(d[i], a[i])
        grads[2 * l] = gW
        grads[2 * l + 1] = delta.sum(axis=0) if b is not None else None
        g = d @ operand(W)
    return L, [x for x in grads if x is not None]


def check_finite_differences(model, X, y, loss, rng, per_param=5, h=1e-6, tol=1e-6):
    """Assert that ``model.loss_and_grad`` (2 threads) agrees with central differences (1 thread) on
    ``per_param`` random entries of every parameter: |fd - g| <= tol * max(1, |fd|)."""
    _, grads = model.loss_and_grad(X, y, loss, threads=2)
    for (pname, p), g in zip(model.named_parameters(), grads):
        flat, gf = p.reshape(-1), g.reshape(-1)
        for idx in rng.choice(flat.size, size=min(per_param, flat.size), replace=False):
            old = flat[idx]
            flat[idx] = old + h
            lp, _ = model.loss_and_grad(X, y, loss, threads=1)
            flat[idx] = old - h
            lm, _ = model.loss_and_grad(X, y, loss, threads=1)
            flat[idx] = old
            fd = (lp - lm) / (2 * h)
            assert abs(fd - gf[idx]) <= tol * max(1.0, abs(fd)), (pname, idx, fd, gf[idx])
