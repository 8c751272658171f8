"""Data-parallel ``fit`` over MPI: ``model.fit(X, y, ..., comm=MPI.COMM_WORLD)``.

Every rank is given the same model, data and arguments. ``batch_size`` stays the global
mini-batch: the examples of each step (positions ``[b0, b0 + size)`` of the epoch's order,
keyed by (seed, epoch) as on one machine) are split into one contiguous share per rank, rank r
taking positions ``[b0 + r*size//R, b0 + (r+1)*size//R)``; when ``size`` does not divide by the
number of ranks R the shares differ by one example, and a batch smaller than R leaves some
ranks without examples (they contribute zero).

Each step (a Python loop over steps: the Allreduce between a step's gradient and its update is
the one per-step cost this inherently adds), each rank runs the compiled core once on its share
with the update off: forward,
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

from .training import Fit, TrainingDiverged

__all__ = ["RemoteError", "fit_distributed", "threads_per_rank"]


class RemoteError(RuntimeError):
    """Raised on every rank but the failing one when a rank of a distributed fit fails."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError('comm= needs mpi4py and an MPI library: pip install "fastnn-cpu[mpi]"') from None
    return MPI


def check_comm(comm):
    """``comm`` as an mpi4py intra-communicator, or a TypeError."""
    MPI = _mpi()
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py communicator such as MPI.COMM_WORLD, got {comm!r}")
    return comm


def agree(comm, err, what):
    """Collective: raise on every rank when ``err`` (an exception or None) is set on any rank."""
    flag = np.array([0.0 if err is None else 1.0])
    comm.Allreduce(_mpi().IN_PLACE, flag)
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
    """``Fit`` with each step's batch split across the ranks of ``comm``."""

    def __init__(self, *args, comm, **kw):
        super().__init__(*args, **kw)
        from .io import Checkpoint

        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        if self.rank != 0:
            self.verbose = 0
            self.callbacks = [cb for cb in self.callbacks if not isinstance(cb, Checkpoint)]
        self.history.params["ranks"] = self.size
        m = self.model
        self._l2_spans = m._l2_spans(self.l2_bias)

    # ------------------------------------------------------------ start
    def signature(self):
        m, d, o = self.model, self.data, self.opt
        return {
            "model": (m.n_params, m.dtype.name, tuple(m.input_shape), _crc(m._params), _crc(m._running),
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

    # ------------------------------------------------------------ epochs
    def run(self):
        m, h = self.model, self.history
        cbs = self._bind()
        self._everywhere(lambda: [cb.on_train_begin() for cb in cbs], "starting the callbacks")
        from ._config import blas_single_thread

        try:
            with blas_single_thread():
                for _ in range(self.epochs):
                    logs = self.epoch()
                    ep = m.epochs_trained - 1
                    self._everywhere(lambda: [cb.on_epoch_end(ep, logs) for cb in cbs],
                                     f"running the callbacks of epoch {ep + 1}")
                    self._check_weights(ep)
                    stop = np.array([1.0 if m.stop_training else 0.0])
                    self.comm.Allreduce(self._MPI.IN_PLACE, stop, op=self._MPI.MAX)
                    if stop[0]:
                        break
        finally:
            for cb in cbs:
                cb.on_train_end()
        h.best_epoch = self._best_epoch()
        return h

    @property
    def _MPI(self):
        return _mpi()

    def _everywhere(self, fn, what):
        err = None
        try:
            fn()
        except Exception as e:      # noqa: BLE001 - re-raised on every rank by agree
            err = e
        agree(self.comm, err, what)

    def _check_weights(self, ep):
        crcs = self.comm.allgather(_crc(self.model._params))
        if len(set(crcs)) > 1:
            raise RuntimeError(f"the ranks' weights differ after epoch {ep + 1} (checksums {crcs}); the MPI "
                               "library's Allreduce did not give every rank the same sum")

    def _validate(self):
        """``evaluate`` on the validation data, each rank computing the outputs of a share of its
        rows; the outputs are gathered, so every rank scores all of them alike."""
        MPI, m, comm = self._MPI, self.model, self.comm
        Xv, yv, swv, lv = self.data.val
        X = m._check_X(Xv)
        yi, yf, sw, pw = m._targets(yv, self.loss, X.shape[0], swv)
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
        return m._scores(out, yi, yf, sw, pw, self.loss, lv)

    def _steps(self, order, lrs, ep, step_loss):
        MPI = self._MPI
        m, d, opt, comm = self.model, self.data, self.opt, self.comm
        R, r, bs = self.size, self.rank, d.batch_size
        state, hp = opt.bind(m), opt.hyper()
        l2, clip_value, clip_norm = self.l2, self.run_kw["clip_value"], self.run_kw["clip_norm"]
        from ._core import _engine

        red, ncls = self.loss.reduction_code, m.n_outputs
        sw = d.sw.astype(np.float64) if d.sw.size else None
        lengths = self.run_kw.get("lengths")
        steps = m._loss_steps(self.loss, d.yi, lengths)
        if steps > 1:
            ncls = m._plan.out_shape[-1]
        mine = []
        part = np.empty(1)
        status = np.empty(2)
        c2 = m.dtype.type(2.0 * l2)
        for s in range(d.n_steps):
            b0, size = s * bs, int(d.sizes[s])
            lo, hi = b0 + (r * size) // R, b0 + ((r + 1) * size) // R
            err = None
            part[0] = 0.0
            try:
                # the global normaliser, summed in example order as the core sums it
                if red == 2:
                    norm = 1.0
                elif steps > 1:
                    norm = _steps_norm(order[b0:b0 + size], sw, lengths, steps) * (ncls if red == 1 else 1)
                else:
                    norm = float(np.cumsum(sw[order[b0:b0 + size]])[-1]) if sw is not None else float(size)
                    norm *= ncls if red == 1 else 1
                if hi > lo:
                    idx = order[lo:hi]
                    mine.append(idx)
                    m._run(d.X, d.yi, d.yf, d.sw, d.pw, self.loss, idx, hi - lo, 1, None, np.zeros(1),
                           self.seed, ep, m.steps_trained, self.n_threads, part, pred=self.pred,
                           pos0=lo - b0, norm_of_step=norm if norm > 0 else 0.0, lengths=lengths,
                           precision=self.precision)
                else:
                    m._grads.fill(0)
            except Exception as e:      # noqa: BLE001 - re-raised on every rank
                err = e
            status[0], status[1] = (0.0 if err is None else 1.0), part[0]
            comm.Allreduce(MPI.IN_PLACE, status)
            if status[0]:
                _raise_all(comm, err, f"computing step {s + 1} of epoch {ep + 1}")
            step_loss[s] = v = status[1]
            if not math.isfinite(v):
                raise TrainingDiverged(
                    f"training loss became {v} at epoch {ep + 1}, step {s + 1}; training stopped and the "
                    f"weights from before that step were kept. Lower the learning rate (now {lrs[s]:g}), "
                    "clip gradients (clip_norm=1.0), or check the data and targets.", ep, s, v)
            g, p = m._grads, m._params
            comm.Allreduce(MPI.IN_PLACE, g)
            # the core's order: L2 term, value clipping, global-norm clipping, update
            for off, n in self._l2_spans if l2 > 0 else ():
                g[off:off + n] += c2 * p[off:off + n]
            if clip_value > 0:
                cv = m.dtype.type(clip_value)
                np.clip(g, -cv, cv, out=g)
            if clip_norm > 0:
                _engine.clip_grad_norm(g, clip_norm, self.n_threads)
            _engine.optimizer_step(opt.code, p, g, state, hp, float(lrs[s]), opt.step_count + 1,
                                   self.n_threads)
            opt.step_count += 1
            m.steps_trained += 1
        if self.track:
            idx = np.concatenate(mine) if mine else np.zeros(0, dtype=np.intp)
            contrib = np.zeros_like(self.pred)
            if d.yi.ndim == 2:      # per-step predictions, step-major
                T = d.yi.shape[1]
                contrib.reshape(T, d.n)[:, idx] = self.pred.reshape(T, d.n)[:, idx]
            else:
                contrib[idx] = self.pred[idx]
            comm.Allreduce(MPI.IN_PLACE, contrib)
            self.pred[...] = contrib


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

    local = comm.Split_type(_mpi().COMM_TYPE_SHARED)
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
        if model._plan.has_bn:
            raise ValueError("BatchNorm couples the examples of a batch, which a distributed fit (comm=) "
                             "splits across ranks; use LayerNorm, or train in one process")
        run = make_fit(model, X, y, fit_class=DistributedFit, comm=comm, **kw)
    except Exception as e:      # noqa: BLE001 - re-raised on every rank by agree
        err = e
    agree(comm, err, "preparing the fit")
    run.check_same()
    return run.run()
