"""Training history and the callback protocol."""


class Callback:
    """Hooks called by ``fit``. Set ``self.model.stop_training = True`` to stop after this epoch."""

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class History(Callback):
    """Per-epoch logs of a fit: ``history.history`` is a dict of lists, as in Keras."""

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.params = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key):
        return self.history[key]

    def plot(self, path=None, metrics=None):
        """Loss and metrics, training against validation, best epoch marked (needs matplotlib)."""
        from .diagnostics import plot_history

        return plot_history(self, path=path, metrics=metrics)

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"


class EarlyStopping(Callback):
    """Stop when ``monitor`` stops improving; keep the model from the best epoch.

    Args:
        monitor: a History key, e.g. ``"val_loss"`` (falls back to ``"loss"`` without validation).
        patience: epochs without improvement to wait before stopping.
        min_delta: the least change that counts as an improvement.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy/F1 keys, else min).
        restore_best: restore the best epoch's weights when training ends, on every exit path
            (patience exhausted, epochs exhausted, a NaN loss, KeyboardInterrupt).
        start_from_epoch: epochs to train before watching for improvement.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto", restore_best=True,
                 start_from_epoch=0):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if int(patience) < 0 or int(start_from_epoch) < 0:
            raise ValueError("EarlyStopping: patience and start_from_epoch must be >= 0")
        if float(min_delta) < 0:
            raise ValueError("EarlyStopping: min_delta must be >= 0")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode, self.restore_best, self.start_from_epoch = mode, bool(restore_best), int(start_from_epoch)

    def on_train_begin(self, logs=None):
        self.best = None
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0
        self.stopped_epoch = None
        self._key = None
        self._seen = 0

    def _sign(self, key):
        mode = self.mode
        if mode == "auto":
            mode = "max" if any(s in key for s in ("acc", "f1", "auc")) else "min"
        return 1.0 if mode == "min" else -1.0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._seen += 1
        key = self.monitor if self.monitor in logs else (
            "loss" if self.monitor == "val_loss" and "loss" in logs else None)
        if key is None:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not among the logged values "
                             f"{sorted(logs)}; pass validation data or monitor one of those")
        self._key = key
        if self._seen <= self.start_from_epoch:
            return
        value = self._sign(key) * float(logs[key])
        if value != value:          # NaN never improves
            return
        if self.best is None or value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_weights = self.model.flat_params.copy()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best and self.best_weights is not None:
            self.model.flat_params[...] = self.best_weights

    @property
    def best_value(self):
        return None if self.best is None else self._sign(self._key) * self.best
