"""Containers: Residual blocks."""
from .base import Layer
from .dense import Dense


class Residual(Layer):
    """A residual block ``y = P(x) + f(x)``: ``f`` the stack of ``layers``, ``P`` the identity, or
    the ``projection`` (a ``Dense``) when ``f`` changes the shape.

    Parameters are named as a torch module with attributes ``layers`` (an ``nn.Sequential``) and
    ``projection`` would name them: ``"i.layers.j.weight"``, ``"i.projection.weight"``.
    Residuals nest and repeat; ``fastnn.io.TorchResidual`` is the matching torch module.
    """

    def __init__(self, *layers, projection=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Residual needs at least one layer")
        for j, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Residual: layer {j} is {layer!r}, not a fastnn layer")
        if projection is not None and not isinstance(projection, Dense):
            raise TypeError(f"Residual: projection must be a fn.Dense or None, got {projection!r}")
        self.layers = list(layers)
        self.projection = projection

    def children(self):
        out = [(f"layers.{j}", layer) for j, layer in enumerate(self.layers)]
        if self.projection is not None:
            out.append(("projection", self.projection))
        return out

    def get_config(self):
        return {"type": "Residual", "layers": [layer.get_config() for layer in self.layers],
                "projection": None if self.projection is None else self.projection.get_config()}

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        proj = f", projection={self.projection!r}" if self.projection is not None else ""
        return f"Residual({inner}{proj})"
