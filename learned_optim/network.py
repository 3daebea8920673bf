"""The meta-parameters of a learned optimizer: a coordinatewise LSTM and its config.

One tiny LSTM cell is shared by every coordinate of every parameter. Its weights
(`CoordinatewiseLSTM`) are *meta*-parameters: they are trained by `learned_optim.meta`,
never by the optimizer that uses them, and they never appear in a user's param groups.
The per-coordinate recurrent state (hidden ``h`` and cell ``c``) is *optimizer state*
and lives in ``optimizer.state[p]``, never on this module.

Layout is feature-major throughout: features are ``[F, N]``, recurrent state ``[H, N]``
for ``N`` coordinates. A ``[4H, F+H] @ [F+H, N]`` matmul is far faster on CPU than the
row-major ``[N, F+H] @ [F+H, 4H]`` form (measured 50 ms vs 269 ms at 1e6 coordinates, H=8).

Saving and loading (``save_pretrained``, ``from_pretrained``, ``push_to_hub``) live in
``learned_optim.hub``, which owns the file format and adds them to ``CoordinatewiseLSTM`` as
methods when it is imported (``import learned_optim`` imports it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .common.config import check_int, check_number, config_error

__all__ = ["FORMAT_VERSION", "FEATURES", "WEIGHT_NAMES", "LSTMOptimizerConfig", "CoordinatewiseLSTM", "lstm_cell"]

# Version of the on-disk format (config.json + model.safetensors). Bump when the meaning
# of a field or tensor changes; loaders refuse versions newer than they understand.
FORMAT_VERSION = 1

# Input features the rule knows how to compute, by name (see update.lstm_rule):
#   "g_norm": g_t / (sqrt(v_hat_t) + eps)        (RNNprop's scale-free gradient input)
#   "m_norm": m_hat_t / (sqrt(v_hat_t) + eps)    (the Adam direction, RNNprop's momentum input)
# Both are scale-free (multiplying the loss by a constant leaves them unchanged) and are
# clipped to [-feature_clip, feature_clip]. No absolute-time feature on purpose: it is the
# main reason learned optimizers fail at horizons longer than they were trained on.
FEATURES = ("g_norm", "m_norm")

# The meta-parameters of a CoordinatewiseLSTM, by attribute name, in the one order used everywhere:
# flat meta-parameter vectors, safetensors files, checkpoints, and the mapping lstm_rule accepts.
WEIGHT_NAMES = ("weight", "bias", "head_weight", "head_bias")


@dataclass(frozen=True)
class LSTMOptimizerConfig:
    """Every hyperparameter and constant the update rule needs (saved as config.json).

    Attributes:
        hidden_size: LSTM hidden units per coordinate (H). State costs 2*H floats/coordinate.
        features: names of the input features, a subset of ``FEATURES``, in order.
        beta1: decay of the first moment m. Default 0.9, Adam's (Kingma & Ba, 2015).
        beta2: decay of the second moment v. Default 0.999, Adam's.
        eps: added to sqrt(v_hat). Default 1e-8, Adam's.
        feature_clip: inputs are clipped to [-feature_clip, feature_clip]. Default 5.0; the
            Adam direction m_hat/sqrt(v_hat) is at most ~1/sqrt(1-beta2)~31 in magnitude but
            sits within +-5 for all but the first steps of a coordinate.
        log_scale_bound: the learned per-coordinate step multiplier is
            exp(log_scale_bound * tanh(y_0)), i.e. within [e^-b, e^b]. Default 3.0, so the
            rule can reach ~20x the Adam step: per-task tuned Adam learning rates are often 3-100x
            the default 1e-3 (the "Adam tuned" column of benchmarks/results/quality.md), and a
            learned rule must be able to get there.
        direction_bound: the learned additive direction is direction_bound * tanh(y_1). Default
            0.5 (the Adam direction itself is O(1)); it lets the rule step where Adam would not.
    """

    hidden_size: int = 4
    features: tuple[str, ...] = FEATURES
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    feature_clip: float = 5.0
    log_scale_bound: float = 3.0
    direction_bound: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        check_int(self, "hidden_size", minimum=1)
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features or len(set(self.features)) != len(self.features):
            config_error(self, "features", f"distinct names from {FEATURES}", f"pass a non-empty subset of {FEATURES}")
        for name in ("beta1", "beta2"):
            check_number(self, name, ge=0.0, lt=1.0)
        for name in ("eps", "feature_clip"):
            check_number(self, name, gt=0.0)
        for name in ("log_scale_bound", "direction_bound"):
            check_number(self, name, ge=0.0)

    @property
    def num_features(self) -> int:
        return len(self.features)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LSTMOptimizerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise KeyError(missing)
        return cls(**{k: d[k] for k in names})


class CoordinatewiseLSTM(nn.Module):
    """A one-layer LSTM cell applied independently to every coordinate, plus an output head.

    Parameters (the meta-parameters; shapes with F = len(config.features), H = hidden_size):
        weight:      [4H, F+H]  gate weights for [features; h], gate order (i, f, g, o) as torch.nn.LSTM
        bias:        [4H]
        head_weight: [2, H]     output head: y = head_weight @ h' + head_bias
        head_bias:   [2]

    A fresh network has a zero output head, so y = 0 and the rule it defines is exactly Adam
    (see ``learned_optim.update.lstm_rule``) whatever the LSTM weights are.

    Args:
        config: the architecture and rule constants. Default ``LSTMOptimizerConfig()``.
        provenance: free-form JSON-able dict saved in config.json (how the weights were made).
        seed: seed for the LSTM weight initialisation (torch.nn.LSTM's U(-1/sqrt(H), 1/sqrt(H))).

    ``learned_optim.hub`` adds the methods ``save_pretrained(directory)``, ``push_to_hub(repo_id)``
    and the classmethod ``from_pretrained(name_or_path)`` (see there).
    """

    def __init__(
        self,
        config: LSTMOptimizerConfig | None = None,
        provenance: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if config is None:
            config = LSTMOptimizerConfig()
        if not isinstance(config, LSTMOptimizerConfig):
            raise TypeError(f"config must be an LSTMOptimizerConfig, got {type(config).__name__}")
        self.config = config
        self.provenance: dict[str, Any] = dict(provenance or {})
        h, f = config.hidden_size, config.num_features
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(h)
        self.weight = nn.Parameter(torch.empty(4 * h, f + h).uniform_(-bound, bound, generator=gen))
        bias = torch.empty(4 * h).uniform_(-bound, bound, generator=gen)
        bias[h : 2 * h] += 1.0  # forget-gate bias +1 (Jozefowicz et al. 2015): remember by default
        self.bias = nn.Parameter(bias)
        self.head_weight = nn.Parameter(torch.zeros(2, h))
        self.head_bias = nn.Parameter(torch.zeros(2))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each meta-parameter, by name, in ``WEIGHT_NAMES`` order."""
        h, f = self.config.hidden_size, self.config.num_features
        return dict(zip(WEIGHT_NAMES, ((4 * h, f + h), (4 * h,), (2, h), (2,))))

    def forward(
        self, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One LSTM step for N coordinates. features [F, N], h and c [H, N] -> (y [2, N], h', c').

        Pure and differentiable (meta-training backpropagates through it).
        """
        return lstm_cell(features, h, c, self.weight, self.bias, self.head_weight, self.head_bias)

    def extra_repr(self) -> str:
        return f"hidden_size={self.config.hidden_size}, features={self.config.features}"


def lstm_cell(
    features: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference LSTM cell, feature-major. Returns (y [2, N], h' [H, N], c' [H, N])."""
    hs = h.shape[0]
    gates = weight @ torch.cat([features, h], dim=0) + bias[:, None]
    i = torch.sigmoid(gates[0:hs])
    f = torch.sigmoid(gates[hs : 2 * hs])
    g = torch.tanh(gates[2 * hs : 3 * hs])
    o = torch.sigmoid(gates[3 * hs : 4 * hs])
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    y = head_weight @ h_new + head_bias[:, None]
    return y, h_new, c_new
