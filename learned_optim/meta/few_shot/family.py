"""The few-shot task family: digit classes, N-way K-shot episodes and the functional MLP adapted on them."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ...common.data import digits

__all__ = ["digits_classes", "EpisodeSampler", "init_params", "layer_shapes", "mlp_logits", "mlp_size", "query_loss"]


def digits_classes(rotations: int = 4) -> tuple[Tensor, Tensor, list[int], list[int]]:
    """Digits as few-shot classes: returns (X [n, 64] in [0, 1], y, train classes, held-out classes).

    Class id = digit * rotations + r for the image rotated by r * 90 degrees. Digits 0-4 are
    meta-training classes, digits 5-9 held out.
    """
    x, y = digits()
    img = x.view(-1, 8, 8)
    xs, ys = [], []
    for r in range(rotations):
        xs.append(torch.rot90(img, r, dims=(1, 2)).reshape(-1, 64))
        ys.append(y * rotations + r)
    train = [d * rotations + r for d in range(5) for r in range(rotations)]
    held = [d * rotations + r for d in range(5, 10) for r in range(rotations)]
    return torch.cat(xs), torch.cat(ys), train, held


class EpisodeSampler:
    """Samples N-way K-shot episodes from ``(X, y)`` restricted to ``classes``.

    Labels inside an episode are 0..N-1 in a random order. Support and query are disjoint.
    """

    def __init__(self, x: Tensor, y: Tensor, classes: Sequence[int], n_way: int, q_query: int) -> None:
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"X must be [n, features] and y [n], got {tuple(x.shape)} and {tuple(y.shape)}")
        if len(classes) < n_way:
            raise ValueError(f"need at least n_way={n_way} classes, got {len(classes)}")
        self.x = x
        self.n_way, self.q_query = n_way, q_query
        self.classes = list(classes)
        self.index = {c: (y == c).nonzero().flatten() for c in self.classes}
        small = [c for c, idx in self.index.items() if len(idx) < 2]
        if small:
            raise ValueError(f"classes {small} have fewer than 2 examples")

    def sample(self, k_shot: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (x_support [N*K, d], y_support, x_query [N*Q', d], y_query)."""
        pick = torch.randperm(len(self.classes), generator=gen)[: self.n_way].tolist()
        xs, ys, xq, yq = [], [], [], []
        for label, ci in enumerate(pick):
            idx = self.index[self.classes[ci]]
            q = min(self.q_query, len(idx) - k_shot)
            if q < 1:
                raise ValueError(f"class {self.classes[ci]} has {len(idx)} examples, too few for k_shot={k_shot}")
            order = idx[torch.randperm(len(idx), generator=gen)]
            xs.append(self.x[order[:k_shot]])
            xq.append(self.x[order[k_shot : k_shot + q]])
            ys.append(torch.full((k_shot,), label))
            yq.append(torch.full((q,), label))
        return torch.cat(xs), torch.cat(ys), torch.cat(xq), torch.cat(yq)


# The MLP in -> hidden -> n_out (ReLU) as one flat parameter vector: w1, b1, w2, b2 flattened.


def layer_shapes(d_in: int, hidden: int, n_out: int) -> list[tuple[int, ...]]:
    """The shapes of w1, b1, w2, b2 in the flat parameter vector, in order."""
    return [(hidden, d_in), (hidden,), (n_out, hidden), (n_out,)]


def mlp_size(d_in: int, hidden: int, n_out: int) -> int:
    """The number of values in the MLP's flat parameter vector."""
    return sum(math.prod(s) for s in layer_shapes(d_in, hidden, n_out))


def init_params(d_in: int, hidden: int, n_out: int, gen: torch.Generator, dtype=torch.float32) -> Tensor:
    """A flat parameter vector with nn.Linear's default init (U(-1/sqrt(fan_in), +))."""
    parts = []
    for shape, fan_in in zip(layer_shapes(d_in, hidden, n_out), (d_in, d_in, hidden, hidden)):
        b = 1.0 / math.sqrt(fan_in)
        parts.append((torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1).mul_(b).flatten())
    return torch.cat(parts)


def mlp_logits(theta: Tensor, x: Tensor, hidden: int, n_out: int) -> Tensor:
    """The MLP with flat parameters ``theta`` applied to ``x`` [n, d_in]: logits [n, n_out]."""
    shapes = layer_shapes(x.shape[1], hidden, n_out)
    w1, b1, w2, b2 = torch.split(theta, [math.prod(s) for s in shapes])
    h = torch.relu(x @ w1.view(shapes[0]).T + b1)
    return h @ w2.view(shapes[2]).T + b2


def query_loss(theta: Tensor, query: tuple[Tensor, Tensor], hidden: int, n_way: int) -> Tensor:
    """Cross-entropy of the MLP ``theta`` on ``query`` = (x, labels): an episode's meta-objective."""
    return nn.functional.cross_entropy(mlp_logits(theta, query[0], hidden, n_way), query[1])
