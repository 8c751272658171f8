"""Data-parallel ``fit`` over MPI: ``model.fit(X, y, ..., comm=MPI.COMM_WORLD)``.

Every rank is given the same model, data and arguments. ``batch_size`` stays the global
mini-batch: the examples of each step (positions ``[b0, b0 + size)`` of the epoch's order,
keyed by (seed, epoch) as on one machine) are split into one contiguous share per rank, rank r
taking positions ``[b0 + r*size//R, b0 + (r+1)*size//R)``; when ``size`` does not divide by the
number of ranks R the shares differ by one example, and a batch smaller than R leaves some
ranks without examples (they contribute zero).

``DistributedFit`` runs the epoch loop of ``training.Fit`` with its own ``step``, handed one step
at a time (the Allreduce between a step's gradient and its update is the one per-step cost this
inherently adds): each rank runs the compiled core once on its share with the update off: forward,
loss and backward, dropout masks keyed by the example's position in the global batch, and the
gradient tiles scaled by the *global* normaliser (the whole batch's sum of example weights), so
its ``grads`` hold its part of the global mean gradient. One ``Allreduce`` (sum) over the flat
gradient buffer combines the parts; every rank then applies the L2 term, value clipping,
global-norm clipping and the optimizer update to its copy of the weights, in the single-process
order. A small ``Allreduce`` before it carries the step's loss and a failure flag, so an exception
on one rank makes every rank raise (the failing rank its own exception, the others
``RemoteError``) instead of hanging, and a non-finite loss raises ``TrainingDiverged`` on every
rank before the update.

``threads=None`` gives each rank its machine's default thread count divided by the number of
ranks on that machine. Training metrics are reduced across ranks (each rank predicts its own
examples); for validation each rank computes the outputs of a share of the rows and all outputs
are gathered, so ``EarlyStopping`` and ``ReduceOnPlateau`` decide the same everywhere. Only rank
0 prints and writes checkpoints (``checkpoint=`` and ``fn.Checkpoint`` callbacks); a checkpoint
holds no trace of the number of ranks, so it resumes with any number.
At the start a checksum of the model, optimizer, data and arguments is compared across ranks; at
the end of every epoch, a checksum of the weights.

Determinism: for a given number of ranks and threads the result is the same on every run and
every rank. Against one process training the same global batches, the gradient of a step is
summed in a different order (per share, then across ranks), so weights agree to rounding (about
1e-15 relative per step in float64), not bit for bit. BatchNorm (statistics coupled across the
batch) and ``diagnostics`` are refused with ``comm``.
"""
import math
import zlib

import numpy as np

from ._core import _engine
from ._util import mpi
from .data.validation import check_input, check_targets, loss_steps
from .metrics import scores
from .training import Fit

__all__ = ["RemoteError", "fit_distributed", "threads_per_rank"]


class RemoteError(RuntimeError):
    """Raised on every rank but the failing one when a rank of a distributed fit fails."""


def check_comm(comm):
    """``comm`` as an mpi4py intra-communicator, or a TypeError."""
    MPI = mpi()
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py communicator such as MPI.COMM_WORLD, got {comm!r}")
    return comm


def agree(comm, err, what):
    """Collective: raise on every rank when ``err`` (an exception or None) is set on any rank."""
    flag = np.array([0.0 if err is None else 1.0])
    comm.Allreduce(mpi().IN_PLACE, flag)
    if flag[0] == 0:
        return
    _raise_all(comm, err, what)


def _raise_all(comm, err, what):
    msgs = comm.allgather(None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    k = next(i for i, m in enumerate(msgs) if m is not None)
    raise RemoteError(f"rank {k} of {len(msgs)} failed while {what}: {msgs[k]}")


def _crc(a):
    a = np.ascontiguousarray(a)
    return zlib.crc32(a.view(np.uint8).reshape(-1)) if a.size else 0


def _sample_crc(a):
    """Checksum of up to 256 evenly spaced rows (cheap on memory-maps) and the shape."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.ndim == 0 or a.shape[0] == 0:
        return (a.shape, 0)
    rows = np.unique(np.linspace(0, a.shape[0] - 1, min(a.shape[0], 256)).astype(np.intp))
    return (a.shape, str(a.dtype), _crc(a[rows]))


def _describe(obj):
    """The type and settings of a loss or schedule (no object addresses)."""
    if obj is None:
        return None
    return (type(obj).__name__, sorted((k, _crc(v) if isinstance(v, np.ndarray) else repr(v))
                                       for k, v in vars(obj).items()
                                       if isinstance(v, (int, float, str, bool, type(None), np.ndarray))))


class DistributedFit(Fit):
    """``Fit``'s epoch loop with each step's batch split across the ranks of ``comm``: its own
    ``step`` (one step per call), ``validate``, ``everywhere`` and ``stop_requested``."""

    interruptible = False
    max_steps_per_call = 1

    def __init__(self, *args, comm, **kw):
        super().__init__(*args, **kw)
        from .io import Checkpoint

        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        if self.rank != 0:
            self.verbose = 0
            self.callbacks = [cb for cb in self.callbacks if not isinstance(cb, Checkpoint)]
        self.history.params["ranks"] = self.size
        m, d = self.model, self.data
        self.l2_spans = m.l2_spans(self.l2_bias)
        self.lengths = self.run_kw.get("lengths")
        self.loss_steps = loss_steps(self.loss, d.yi, self.lengths, m.plan)
        self.n_classes = m.plan.out_shape[-1] if self.loss_steps > 1 else m.n_outputs
        self.sw = d.sw.astype(np.float64) if d.sw.size else None
        self.part = np.empty(1)

    # ------------------------------------------------------------ start
    def signature(self):
        m, d, o = self.model, self.data, self.opt
        return {
            "model": (m.n_params, m.dtype.name, tuple(m.input_shape), _crc(m.flat_params), _crc(m.flat_running),
                      m.epochs_trained, m.steps_trained),
            "optimizer": (repr(o), o.step_count, _crc(o.state) if o.state is not None else None),
            "data X": _sample_crc(d.X),
            "targets": (_sample_crc(d.yi), _sample_crc(d.yf)),
            "sample weights": _sample_crc(d.sw),
            "lengths": _sample_crc(d.lengths),
            "validation data": None if d.val is None else tuple(_sample_crc(v) for v in d.val),
            "fit arguments": (d.batch_size, d.n_steps, self.epochs, self.shuffle, self.seed, self.l2,
                              self.l2_bias, self.run_kw["clip_value"], self.run_kw["clip_norm"],
                              _describe(self.loss), _describe(self.schedule)),
        }

    def check_same(self):
        """Collective: a ValueError on every rank when the ranks' models, data or arguments differ."""
        sigs = self.comm.allgather(self.signature())
        for k in range(1, len(sigs)):
            for key, v in sigs[0].items():
                if sigs[k][key] != v:
                    hint = " (build it with the same seed= on every rank)" if key == "model" else ""
                    raise ValueError(f"rank {k} was given a different {key} than rank 0{hint}; every rank of "
                                     "a distributed fit must be given the same model, data and fit arguments")

    # ------------------------------------------------------------ the loop's parts, across ranks
    def everywhere(self, fn, what):
        err = None
        try:
            fn()
        except Exception as e:      # noqa: BLE001 - re-raised on every rank by agree
            err = e
        agree(self.comm, err, what)

    def stop_requested(self, ep):
        """The weights compared across ranks, then whether a callback on any rank stopped training."""
        MPI = mpi()
        crcs = self.comm.allgather(_crc(self.model.flat_params))
        if len(set(crcs)) > 1:
            raise RuntimeError(f"the ranks' weights differ after epoch {ep + 1} (checksums {crcs}); the MPI "
                               "library's Allreduce did not give every rank the same sum")
        stop = np.array([1.0 if self.model.stop_training else 0.0])
        self.comm.Allreduce(MPI.IN_PLACE, stop, op=MPI.MAX)
        return bool(stop[0])

    def validate(self):
        """``evaluate`` on the validation data, each rank computing the outputs of a share of its
        rows; the outputs are gathered, so every rank scores all of them alike."""
        MPI, m, comm = mpi(), self.model, self.comm
        Xv, yv, swv, lv = self.data.val
        X = check_input(Xv, m.plan, m.dtype)
        targets = check_targets(yv, self.loss, X.shape[0], m.plan, m.dtype, swv)
        n, k = X.shape[0], m.n_outputs
        bounds = [(r * n) // self.size for r in range(self.size + 1)]
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        local, err = np.empty((0, k), dtype=m.dtype), None
        try:
            if hi > lo:
                local = m.forward(X[lo:hi], self.n_threads,
                                  lengths=lv[lo:hi] if lv is not None else None).reshape(hi - lo, k)
        except Exception as e:      # noqa: BLE001 - re-raised on every rank by agree
            err = e
        agree(comm, err, "computing the validation outputs")
        out = np.empty((n, k), dtype=m.dtype)
        counts = [(b - a) * k for a, b in zip(bounds[:-1], bounds[1:])]
        comm.Allgatherv(local, [out, counts, [a * k for a in bounds[:-1]], MPI.FLOAT if out.dtype == np.float32 else MPI.DOUBLE])
        return scores(out, targets, self.loss, m.plan, lv)

    def steps(self, order, lrs, ep, step_loss):
        """``Fit.steps``, then each rank's training predictions shared with all."""
        self.mine = []
        self.state, self.hyper = self.opt.bind(self.model), self.opt.hyper()
        super().steps(order, lrs, ep, step_loss)
        if self.track:
            d = self.data
            idx = np.concatenate(self.mine) if self.mine else np.zeros(0, dtype=np.intp)
            contrib = np.zeros_like(self.pred)
            if d.yi.ndim == 2:      # per-step predictions, step-major
                T = d.yi.shape[1]
                contrib.reshape(T, d.n)[:, idx] = self.pred.reshape(T, d.n)[:, idx]
            else:
                contrib[idx] = self.pred[idx]
            self.comm.Allreduce(mpi().IN_PLACE, contrib)
            self.pred[...] = contrib

    def step(self, order, lrs, ep, s, k, step_loss):
        """Step ``s`` (k is 1): this rank's share of the batch through the core with the update off,
        the loss and any failure agreed across ranks, then ``update``. Returns 0 when the loss is
        not finite (nothing updated), else 1."""
        m, d, comm = self.model, self.data, self.comm
        R, r, bs = self.size, self.rank, d.batch_size
        b0, size = s * bs, int(d.sizes[s])
        lo, hi = b0 + (r * size) // R, b0 + ((r + 1) * size) // R
        err = None
        part = self.part
        part[0] = 0.0
        try:
            norm = self.normaliser(order[b0:b0 + size])
            if hi > lo:
                idx = order[lo:hi]
                self.mine.append(idx)
                m.run_steps(d.X, d.targets, self.loss, idx, hi - lo, 1, None, np.zeros(1), self.seed, ep,
                            m.steps_trained, self.n_threads, part, pred=self.pred, pos0=lo - b0,
                            norm_of_step=norm if norm > 0 else 0.0, lengths=self.lengths, precision=self.precision)
            else:
                m.flat_grads.fill(0)
        except Exception as e:      # noqa: BLE001 - re-raised on every rank
            err = e
        status = np.array([0.0 if err is None else 1.0, part[0]])
        comm.Allreduce(mpi().IN_PLACE, status)
        if status[0]:
            _raise_all(comm, err, f"computing step {s + 1} of epoch {ep + 1}")
        step_loss[s] = v = status[1]
        if not math.isfinite(v):
            return 0
        self.update(float(lrs[s]))
        return 1

    def normaliser(self, batch):
        """The whole batch's normaliser of the loss, summed in example order as the core sums it."""
        red = self.loss.reduction_code
        if red == 2:
            return 1.0
        if self.loss_steps > 1:
            norm = _steps_norm(batch, self.sw, self.lengths, self.loss_steps)
        else:
            norm = float(np.cumsum(self.sw[batch])[-1]) if self.sw is not None else float(batch.size)
        return norm * (self.n_classes if red == 1 else 1)

    def update(self, lr):
        """The ranks' gradients summed, then the core's order: L2 term, value clipping, global-norm
        clipping, the optimizer's update."""
        m, opt = self.model, self.opt
        g, p = m.flat_grads, m.flat_params
        self.comm.Allreduce(mpi().IN_PLACE, g)
        if self.l2 > 0:
            c2 = m.dtype.type(2.0 * self.l2)
            for off, n in self.l2_spans:
                g[off:off + n] += c2 * p[off:off + n]
        clip_value, clip_norm = self.run_kw["clip_value"], self.run_kw["clip_norm"]
        if clip_value > 0:
            cv = m.dtype.type(clip_value)
            np.clip(g, -cv, cv, out=g)
        if clip_norm > 0:
            _engine.clip_grad_norm(g, clip_norm, self.n_threads)
        _engine.optimizer_step(opt.code, p, g, self.state, self.hyper, lr, opt.step_count + 1, self.n_threads)


def _steps_norm(idx, sw, lengths, steps):
    """The core's normaliser of a per-step loss (steps_norm) for examples ``idx``: their real
    steps, each times its weight, summed in example then step order."""
    lens = lengths[idx] if lengths is not None else np.full(idx.size, steps)
    if sw is None:
        vals = lens.astype(np.float64)
    elif sw.ndim == 2:
        vals = np.concatenate([sw[e, :k] for e, k in zip(idx, lens)])
    else:
        vals = lens * sw[idx]
    return float(np.cumsum(vals)[-1]) if vals.size else 0.0


def threads_per_rank(comm):
    """Collective: this machine's default thread count shared among the ranks running on it."""
    from ._config import get_num_threads

    local = comm.Split_type(mpi().COMM_TYPE_SHARED)
    n = local.Get_size()
    local.Free()
    return max(1, get_num_threads() // n)


def fit_distributed(comm, model, X, y, **kw):
    """``Sequential.fit`` across the ranks of ``comm`` (see the module docstring)."""
    from .training import make_fit

    comm = check_comm(comm)
    if kw.get("threads") is None:
        kw["threads"] = threads_per_rank(comm)
    run, err = None, None
    try:
        if kw.get("diagnostics") not in (None, False):
            raise ValueError("diagnostics are not available in a distributed fit (comm=); run them in one "
                             "process")
        if model.plan.has_bn:
            raise ValueError("BatchNorm couples the examples of a batch, which a distributed fit (comm=) "
                             "splits across ranks; use LayerNorm, or train in one process")
        run = make_fit(model, X, y, fit_class=DistributedFit, comm=comm, **kw)
    except Exception as e:      # noqa: BLE001 - re-raised on every rank by agree
        err = e
    agree(comm, err, "preparing the fit")
    run.check_same()
    return run.run()
