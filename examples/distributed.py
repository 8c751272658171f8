"""Data-parallel training over MPI: the same fit on every rank, one global batch split among them.

Every rank loads the same data and builds the same model; ``fit(..., comm=MPI.COMM_WORLD)``
splits each global batch of ``batch_size`` examples among the ranks, sums their gradients with
one Allreduce per step, and applies the same update on every rank. Rank 0 prints and writes the
checkpoint. With ``--check`` rank 0 also trains the same fit alone and prints how far the two
sets of weights are apart (float64: about 1e-15 relative).

    mpiexec -n 2 python examples/distributed.py                 # one machine, two processes
    mpiexec -n 8 -f hosts python examples/distributed.py         # MPICH: ranks over the hosts listed
    mpiexec -n 2 python examples/distributed.py --check --dtype float64
    python examples/distributed.py                               # one process (no mpiexec)
"""
import argparse

import numpy as np

import fastnn as fn


def main(comm, epochs=10, batch_size=64, dtype="float32", check=False, checkpoint=None):
    X, y = fn.data.load_digits()
    X = X.astype(dtype)

    def model():
        return fn.Sequential(fn.Dense(64, 256), fn.ReLU(), fn.Dropout(0.1), fn.Dense(256, 10),
                             dtype=dtype, seed=0)

    kw = dict(loss=fn.CrossEntropy(), epochs=epochs, batch_size=batch_size, seed=0, validation_split=0.2,
              callbacks=[fn.EarlyStopping(patience=3)])
    m = model()
    rank = comm.Get_rank() if comm is not None else 0
    hist = m.fit(X, y, optimizer=fn.Adam(lr=1e-3), verbose=2, comm=comm, checkpoint=checkpoint, **kw)
    if rank == 0:
        ranks = comm.Get_size() if comm is not None else 1
        print(f"{ranks} rank(s): val_accuracy {hist['val_accuracy'][-1]:.4f} after {len(hist.epoch)} epochs")
        if check:
            alone = model()
            alone.fit(X, y, optimizer=fn.Adam(lr=1e-3), **kw)
            diff = np.max(np.abs(alone._params - m._params)) / np.max(np.abs(alone._params))
            print(f"largest difference from one process: {diff:.2e} of the largest weight")
    return m, hist


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64, help="the global batch")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--check", action="store_true", help="rank 0 compares with one process")
    ap.add_argument("--checkpoint", help="a path rank 0 writes the model to after every epoch")
    args = ap.parse_args()
    try:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    except ImportError:
        comm = None            # no mpi4py: pip install "fastnn-cpu[mpi]"; trains in this process
    main(comm, args.epochs, args.batch_size, args.dtype, args.check, args.checkpoint)
