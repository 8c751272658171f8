"""Embedding: integer tokens -> rows of a learned table."""
from .base import Layer, check_int


class Embedding(Layer):
    """A lookup table (``torch.nn.Embedding``): token ``k`` maps to ``weight[k]``.

    The input is token ids, per example ``(T,)``, in the model's float dtype (an integer array is
    converted; ids must be whole numbers in ``[0, num_embeddings)``, checked on every call; float32
    holds them exactly up to ``2**24``). It must be the model's first layer.

    Args:
        num_embeddings: the number of tokens.
        embedding_dim: the size of each row.
        padding_idx: a token whose row stays as it is (initialised to zeros) and gets no gradient.

    Shape: input ``(N, T)``, output ``(N, T, embedding_dim)``.

    Attributes:
        weight: ``(num_embeddings, embedding_dim)``, initialised N(0, 1) as torch does.
    """

    _views = ("weight",)

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None):
        self.num_embeddings = check_int(num_embeddings, "Embedding", "num_embeddings")
        self.embedding_dim = check_int(embedding_dim, "Embedding", "embedding_dim")
        if padding_idx is not None:
            padding_idx = check_int(padding_idx, "Embedding", "padding_idx", minimum=-self.num_embeddings)
            if padding_idx >= self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be < num_embeddings ({self.num_embeddings}), "
                                 f"got {padding_idx}")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        self.weight = None

    def param_shapes(self, in_shape=None):
        return [("weight", (self.num_embeddings, self.embedding_dim))]

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 1:
            raise ValueError(f"Embedding expects per-example input (T,) of token ids, got shape {in_shape}")
        return (in_shape[0], self.embedding_dim)

    def n_params(self):
        return self.num_embeddings * self.embedding_dim

    def get_config(self):
        return {"type": "Embedding", "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx}

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
