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
from typing import Any, Sequence

import torch
from torch import nn

from .common.config import check_bool, check_int, check_number, config_error

__all__ = ["FORMAT_VERSION", "FEATURES", "CONTEXT_FEATURES", "SIZE_FEATURES", "MODEL_SIZE_FEATURES", "MOMENT_FEATURES",
           "GRAD_FEATURES", "STATIC_FEATURES", "WEIGHT_NAMES", "LSTMOptimizerConfig", "CoordinatewiseLSTM", "lstm_cell"]

# Version of the on-disk format (config.json + model.safetensors). Bump when the meaning
# of a field or tensor changes; loaders refuse versions newer than they understand.
#   1: the rule of ``update.lstm_rule`` with per-coordinate features only.
#   2: adds ``sign_equivariant`` and ``context_features`` (per-tensor inputs). A config that uses
#      neither is written as version 1, byte for byte as before, and runs bit-identically.
FORMAT_VERSION = 2

# Input features the rule knows how to compute, by name (see update.lstm_rule):
#   "g_norm": g_t / (sqrt(v_hat_t) + eps)        (RNNprop's scale-free gradient input)
#   "m_norm": m_hat_t / (sqrt(v_hat_t) + eps)    (the Adam direction, RNNprop's momentum input)
# Both are scale-free (multiplying the loss by a constant leaves them unchanged) and are
# clipped to [-feature_clip, feature_clip]. No absolute-time feature on purpose: it is the
# main reason learned optimizers fail at horizons longer than they were trained on.
FEATURES = ("g_norm", "m_norm")

# Per-tensor context inputs (format version 2), one value per parameter tensor, the same for all
# its coordinates (see update.tensor_context): they cost no per-coordinate memory, and let one
# rule size its steps per layer and per architecture.
#   "p_log_rms":  log10(rms(p) + 1e-8), the parameter tensor's scale (LARS/LAMB's trust ratio
#                 compares the step with it)
#   "log_fan_in": log10(numel / shape[0]) for tensors with >= 2 dimensions, else 0
#   "is_vector":  1 for tensors with <= 1 dimension (biases, norm gains), else 0
#   "log_num_params": log10(P / 1e5), P the number of values in all the parameters the optimizer
#                 updates (every param group; a meta-training task's flat vector): the same for
#                 every tensor, it tells a 5k-parameter MLP from a 1M-parameter transformer, whose
#                 best Adam learning rates differ ~10x. Centred so that 1 to 1e10 values stay
#                 inside the feature clip.
#   "log_num_params_capped": min(log10(P / 1e5), 0), the same size capped at 1e5 values: 0 for
#                 every model of 1e5 values or more. The meta-training families' tasks have 33 to
#                 76k values (benchmarks/results/meta-v2/adam-lr-by-family.md), so a rule's reading of
#                 model size is measured below 1e5 only; this input lets a size-dependent step
#                 (``with_size_prior``) hold there and leave larger models at the rule's step.
#   "adam_log_rms": log10(rms(m_hat / (sqrt(v_hat) + eps)) + 1e-8) over the tensor, from the moments
#                 before this step (0 before the tensor's first step): Adam's own step size in units of
#                 lr. Near 1 while gradients agree from step to step, it falls as they turn to noise
#                 (a small training set memorised: 0.15 to 0.04 on the benchmark ViT, 0.0013 late on the
#                 2000-step suite task, benchmarks/results/step-scale/step-scale.md), so the rule can
#                 tell that regime from one whose gradients still carry signal.
#   "is_vector_large": is_vector times clip(log10(P / 1e4), 0, 1): 0 for every tensor of a model of
#                 1e4 values or fewer and for every matrix, 1 for the vectors (biases, LayerNorm gains)
#                 of a model of 1e5 values or more, rising with log size between. The meta-trained
#                 default rule's step grows with a tensor's fan-in (log_fan_in), which is 0 for a
#                 vector: on the benchmark transformers it took about 1x Adam's step on the vectors and
#                 2.5x on the matrices (benchmarks/results/vector-prior/README.md); a prior on this input
#                 (``with_step_prior``) moves the vectors of large models alone.
#   "grad_log_ratio": log10(rms(g) / rms(sqrt(v_hat))) over the tensor, g this step's gradient and
#                 v_hat = v / (1 - beta2^t) the second moment before this step (0 before the tensor's
#                 first step): how large the gradient is against its own recent history. On the
#                 MLP matrices, whose step size decides both benchmark transformers in opposite
#                 directions, the ratio is 1.2 to 1.3 in the second half of the GPT's training and
#                 0.1 in the last third of the ViT's (benchmarks/results/lr-by-tensor-class/README.md):
#                 a rule can take larger steps where gradients hold up against their history and
#                 smaller ones where they have shrunk to noise around a memorised training set.
#   "grad_log_ratio_large": grad_log_ratio times the ramp of is_vector_large, clip(log10(P / 1e4), 0, 1):
#                 0 for every tensor of a model of 1e4 values or fewer, the full ratio from 1e5 values.
#                 A prior on grad_log_ratio shrinks the steps of late training wherever gradients fall
#                 against their history: what the benchmark ViT's held-out accuracy wants, and what the
#                 small training-loss tasks that converge do not (benchmarks/results/grad-log-ratio/large/README.md);
#                 on this input it moves large models alone.
CONTEXT_FEATURES = ("p_log_rms", "log_fan_in", "is_vector", "log_num_params", "log_num_params_capped",
                    "adam_log_rms", "is_vector_large", "grad_log_ratio", "grad_log_ratio_large")
# The size inputs a size prior acts on (``CoordinatewiseLSTM.with_size_prior``).
SIZE_FEATURES = ("log_num_params", "log_num_params_capped")
# The context inputs that read the model's size P (the optimizer counts it only for rules that do).
MODEL_SIZE_FEATURES = SIZE_FEATURES + ("is_vector_large", "grad_log_ratio_large")
# The context inputs that depend only on the tensors' shapes and the model's size P: the same at every
# step of a model, so they are computed once per model (``update.tensor_context`` keeps them).
STATIC_FEATURES = ("log_fan_in", "is_vector", "log_num_params", "log_num_params_capped", "is_vector_large")
# The context inputs that read the moments m, v and the step count before the step.
MOMENT_FEATURES = ("adam_log_rms", "grad_log_ratio", "grad_log_ratio_large")
# The context inputs that also read this step's gradients.
GRAD_FEATURES = ("grad_log_ratio", "grad_log_ratio_large")
# The provenance key recording the weight ``CoordinatewiseLSTM.with_step_prior`` (and ``with_size_prior``)
# added, by input.
PRIOR_KEYS = {"log_num_params": "size_prior", "log_num_params_capped": "size_prior_capped",
              "p_log_rms": "p_log_rms_prior", "log_fan_in": "log_fan_in_prior", "is_vector": "vector_prior",
              "adam_log_rms": "adam_log_rms_prior", "is_vector_large": "large_vector_prior",
              "grad_log_ratio": "grad_log_ratio_prior", "grad_log_ratio_large": "large_grad_log_ratio_prior"}

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
        sign_equivariant: (format version 2) the features are multiplied by sign(m_t) and the
            additive direction by sign(m_t), so flipping the sign of every gradient flips the
            sign of every step exactly: no drift under zero-mean gradient noise. Default False
            (version 1's rule).
        context_features: (format version 2) names from ``CONTEXT_FEATURES``: per-tensor inputs to
            the LSTM gates and the output head. Default ``()`` (version 1's rule).
        cautious_scale: (format version 2) when above 0, a coordinate whose momentum m_t and
            gradient g_t disagree in sign takes no step this time, and every other coordinate's
            step is multiplied by ``cautious_scale`` (1 keeps the rule's own steps; above 1 makes
            up for the masked ones). Default 0.0 (off: version 1's rule). A mask on the rule's
            output, not learned; the idea is the cautious optimizers' (Liang et al., 2024,
            "Cautious Optimizers: Improving Training with One Line of Code"), who mask by the
            agreement of the update with the gradient and rescale by the kept fraction of each
            tensor; here the mask reads m_t, so that it needs nothing beyond the coordinate (one
            pass, no per-tensor reduction), and the rescale is one constant. Sign equivariance and
            the zero step of a coordinate never given a gradient both hold with it.
        cautious_rescale: (format version 2, with ``cautious_scale`` above 0) the kept steps of
            each tensor are multiplied by ``numel / (kept + 1)`` as well, ``kept`` the number of
            its coordinates the mask keeps at this step: the rescale of the cautious optimizers,
            which restores the tensor's step size when the mask drops part of it. It costs one
            count per tensor before the update (a pass over m and g; summed over every rank's
            shard of an FSDP2 parameter). Default False (the constant ``cautious_scale`` only).
    """

    hidden_size: int = 4
    features: tuple[str, ...] = FEATURES
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    feature_clip: float = 5.0
    log_scale_bound: float = 3.0
    direction_bound: float = 0.5
    sign_equivariant: bool = False
    context_features: tuple[str, ...] = ()
    cautious_scale: float = 0.0
    cautious_rescale: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        check_int(self, "hidden_size", minimum=1)
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features or len(set(self.features)) != len(self.features):
            config_error(self, "features", f"distinct names from {FEATURES}", f"pass a non-empty subset of {FEATURES}")
        object.__setattr__(self, "context_features", tuple(self.context_features)
                           if isinstance(self.context_features, (list, tuple)) else self.context_features)
        ctx = self.context_features
        if (not isinstance(ctx, tuple) or any(f not in CONTEXT_FEATURES for f in ctx)
                or len(set(ctx)) != len(ctx)):
            config_error(self, "context_features", f"distinct names from {CONTEXT_FEATURES}",
                         f"pass a subset of {CONTEXT_FEATURES} (or () for none)")
        check_bool(self, "sign_equivariant")
        for name in ("beta1", "beta2"):
            check_number(self, name, ge=0.0, lt=1.0)
        for name in ("eps", "feature_clip"):
            check_number(self, name, gt=0.0)
        for name in ("log_scale_bound", "direction_bound", "cautious_scale"):
            check_number(self, name, ge=0.0)
        check_bool(self, "cautious_rescale")
        if self.cautious_rescale and not self.cautious_scale:
            config_error(self, "cautious_rescale", "True only with the cautious mask on (cautious_scale above 0)",
                         "set cautious_scale (e.g. 1.0) as well, or cautious_rescale=False")

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def num_context(self) -> int:
        return len(self.context_features)

    @property
    def reads_model_size(self) -> bool:
        """Whether a context input reads the model's size (``MODEL_SIZE_FEATURES``)."""
        return any(name in MODEL_SIZE_FEATURES for name in self.context_features)

    @property
    def reads_moments(self) -> bool:
        """Whether a context input reads the moments before the step (``MOMENT_FEATURES``)."""
        return any(name in MOMENT_FEATURES for name in self.context_features)

    @property
    def reads_grads(self) -> bool:
        """Whether a context input reads this step's gradients (``GRAD_FEATURES``)."""
        return any(name in GRAD_FEATURES for name in self.context_features)

    @property
    def format_version(self) -> int:
        """The oldest format version that can hold this config: 1 unless it uses a version-2 field."""
        # cautious_rescale needs cautious_scale (checked above), so it is covered by it
        return 2 if self.sign_equivariant or self.context_features or self.cautious_scale else 1

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-able values; the version-2 fields only when they differ from their
        defaults, so a version-1 config serialises exactly as it always did."""
        d = dataclasses.asdict(self)
        d["features"] = list(self.features)
        d["context_features"] = list(self.context_features)
        for name, default in _V2_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LSTMOptimizerConfig":
        """The config from ``to_dict``'s output; the version-2 fields may be absent (defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {**_V2_DEFAULTS, **d}
        missing = sorted(names - set(d))
        if missing:
            raise KeyError(missing)
        return cls(**{k: d[k] for k in names})


# The version-2 fields and the values that mean "version 1's rule".
_V2_DEFAULTS: dict[str, Any] = {"sign_equivariant": False, "context_features": [], "cautious_scale": 0.0,
                                "cautious_rescale": False}


class CoordinatewiseLSTM(nn.Module):
    """A one-layer LSTM cell applied independently to every coordinate, plus an output head.

    Parameters (the meta-parameters; shapes with F = len(config.features), K =
    len(config.context_features), H = hidden_size):
        weight:      [4H, F+K+H]  gate weights for [features; context; h], gate order (i, f, g, o)
                                  as torch.nn.LSTM
        bias:        [4H]
        head_weight: [2, H+K]     output head: y = head_weight @ [h'; context] + head_bias
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
        h, f, k = config.hidden_size, config.num_features, config.num_context
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(h)
        self.weight = nn.Parameter(torch.empty(4 * h, f + k + h).uniform_(-bound, bound, generator=gen))
        bias = torch.empty(4 * h).uniform_(-bound, bound, generator=gen)
        bias[h : 2 * h] += 1.0  # forget-gate bias +1 (Jozefowicz et al. 2015): remember by default
        self.bias = nn.Parameter(bias)
        self.head_weight = nn.Parameter(torch.zeros(2, h + k))
        self.head_bias = nn.Parameter(torch.zeros(2))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each meta-parameter, by name, in ``WEIGHT_NAMES`` order."""
        h, f, k = self.config.hidden_size, self.config.num_features, self.config.num_context
        return dict(zip(WEIGHT_NAMES, ((4 * h, f + k + h), (4 * h,), (2, h + k), (2,))))

    def forward(
        self, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One LSTM step for N coordinates. features [F, N], h and c [H, N], context [K, N] or
        [K, 1] (``None`` when K = 0) -> (y [2, N], h', c').

        Pure and differentiable (meta-training backpropagates through it).
        """
        return lstm_cell(features, h, c, self.weight, self.bias, self.head_weight, self.head_bias, context)

    def with_context_features(self, names: Sequence[str]) -> "CoordinatewiseLSTM":
        """The same rule with the context inputs ``names`` (a superset of this rule's, in any
        order): a new input starts with zero weights into the gates and the head, so the returned
        network takes exactly this network's steps; meta-training then learns how to use it.

        Example::

            >>> net = CoordinatewiseLSTM(LSTMOptimizerConfig(context_features=("p_log_rms",)))
            >>> wider = net.with_context_features(("p_log_rms", "log_num_params"))
            >>> wider.config.context_features
            ('p_log_rms', 'log_num_params')
        """
        cfg = self.config
        names = tuple(names) if isinstance(names, (list, tuple)) else names
        missing = [n for n in cfg.context_features if not isinstance(names, tuple) or n not in names]
        if missing:
            raise ValueError(f"names={names!r} drops the context features {missing} of these weights: pass a superset "
                             f"of {cfg.context_features}")
        new = CoordinatewiseLSTM(dataclasses.replace(cfg, context_features=names), provenance=dict(self.provenance))
        f, k, h = cfg.num_features, cfg.num_context, cfg.hidden_size
        with torch.no_grad():
            weight = torch.zeros_like(new.weight)
            weight[:, :f] = self.weight[:, :f]
            weight[:, f + len(names):] = self.weight[:, f + k:]
            head = torch.zeros_like(new.head_weight)
            head[:, :h] = self.head_weight[:, :h]
            for j, name in enumerate(cfg.context_features):
                weight[:, f + names.index(name)] = self.weight[:, f + j]
                head[:, h + names.index(name)] = self.head_weight[:, h + j]
            new.weight.copy_(weight)
            new.head_weight.copy_(head)
            new.bias.copy_(self.bias)
            new.head_bias.copy_(self.head_bias)
        return new.to(self.weight.dtype)

    def with_size_prior(self, slope: float, feature: str = "log_num_params") -> "CoordinatewiseLSTM":
        """The same rule with its step-scale output shifted by model size: ``with_step_prior(slope,
        feature)`` restricted to the size inputs ``SIZE_FEATURES``.

        With ``slope < 0`` models below 1e5 parameters (the input's zero) take larger steps; with
        ``feature="log_num_params"`` larger models take smaller ones, with
        ``"log_num_params_capped"`` they keep this rule's steps. For a coordinate whose ``y_0`` is
        near 0 the step scales by about ``P ** (slope * log_scale_bound / ln 10)`` with the
        model's size ``P``, the power law of Adam's best learning rate over the meta-training
        families (Adam's best lr falls about 2x per decade of parameters there;
        ``benchmarks/adam_lr_by_family.py``). A rule can learn this weight, but meta-training
        learns little of it (the default's recipe takes about one multiple of Adam's step at
        every model size; with the input from the start it learned -0.13, see
        benchmarks/results/meta-v2/README.md), hence a way to set it.

        Args:
            slope: added to the head weight of ``feature`` on ``y_0`` (a finite number; 0 gives
                this rule's steps exactly, with the input added if it was missing).
            feature: the size input, one of ``SIZE_FEATURES``. Default ``"log_num_params"``.

        Example::

            >>> net = CoordinatewiseLSTM(LSTMOptimizerConfig(context_features=("p_log_rms",)))
            >>> sized = net.with_size_prior(-0.35)
            >>> sized.config.context_features
            ('p_log_rms', 'log_num_params')
            >>> round(sized.head_weight[0, -1].item(), 2)
            -0.35
            >>> net.with_size_prior(-0.3, feature="log_num_params_capped").provenance
            {'size_prior_capped': -0.3}
        """
        if not isinstance(feature, str) or feature not in SIZE_FEATURES:
            raise ValueError(f"feature must be one of {SIZE_FEATURES} (the size input the prior acts on), "
                             f"got {feature!r}")
        return self.with_step_prior(slope, feature)

    def with_step_prior(self, slope: float, feature: str) -> "CoordinatewiseLSTM":
        """The same rule with ``slope`` added to the head's weight from the context input
        ``feature`` to ``y_0``, the log step scale's pre-activation
        (``direction = adam_step * exp(log_scale_bound * tanh(y_0)) + ...``), adding the input
        first (with ``with_context_features``) if the rule lacks it. Every other weight is
        unchanged, so tensors or models where the input is 0 keep this rule's steps exactly; for a
        coordinate whose ``y_0`` is near 0 the step is multiplied by about
        ``exp(log_scale_bound * slope * z)`` where the input reads ``z``. On ``"is_vector"`` it
        scales the steps of vectors (biases, LayerNorm gains) alone. The slope added is recorded
        in the provenance under ``PRIOR_KEYS[feature]`` (summed over repeated calls).

        Args:
            slope: added to the head weight of ``feature`` on ``y_0``; a finite number.
            feature: a context input, one of ``CONTEXT_FEATURES``.

        Example::

            >>> net = CoordinatewiseLSTM(LSTMOptimizerConfig(context_features=("p_log_rms", "is_vector")))
            >>> net.with_step_prior(0.3, "is_vector").provenance
            {'vector_prior': 0.3}
        """
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise TypeError(f"slope must be a number (the head weight added on {feature}, e.g. -0.35), "
                            f"got {type(slope).__name__} {slope!r}")
        if not math.isfinite(slope):
            raise ValueError(f"slope must be a finite number (the head weight added on {feature}, e.g. -0.35), "
                             f"got {slope!r}")
        if not isinstance(feature, str) or feature not in CONTEXT_FEATURES:
            raise ValueError(f"feature must be one of {CONTEXT_FEATURES} (the context input the prior acts on), "
                             f"got {feature!r}")
        names = self.config.context_features
        new = self.with_context_features(names if feature in names else names + (feature,))
        col = self.config.hidden_size + new.config.context_features.index(feature)
        with torch.no_grad():
            new.head_weight[0, col] += slope
        # the provenance keeps the total slope added, so a card can say how the weights were made
        key = PRIOR_KEYS[feature]
        new.provenance[key] = float(self.provenance.get(key, 0.0)) + slope
        return new

    def with_cautious_mask(self, scale: float = 1.0, rescale: bool = False) -> "CoordinatewiseLSTM":
        """The same weights with the cautious mask on (``LSTMOptimizerConfig.cautious_scale`` set
        to ``scale``): a coordinate whose momentum and gradient disagree in sign takes no step, the
        others take the rule's step times ``scale`` (and, with ``rescale``, times each tensor's
        numel / (kept + 1): ``LSTMOptimizerConfig.cautious_rescale``). The scale is recorded in the
        provenance under ``"cautious_mask"``, the rescale under ``"cautious_rescale"``.

        Args:
            scale: the kept steps' multiplier, a finite number above 0. Default 1.0 (the rule's
                own steps where the signs agree).
            rescale: whether each tensor's kept steps are rescaled by numel / (kept + 1) as
                well. Default False.

        Example::

            >>> net = CoordinatewiseLSTM(LSTMOptimizerConfig(sign_equivariant=True)).with_cautious_mask()
            >>> net.config.cautious_scale, net.provenance
            (1.0, {'cautious_mask': 1.0})
        """
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a number (the kept steps' multiplier, e.g. 1.0), got "
                            f"{type(scale).__name__} {scale!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number above 0 (the kept steps' multiplier, e.g. 1.0), "
                             f"got {scale!r}")
        if not isinstance(rescale, bool):
            raise TypeError(f"rescale must be True or False (whether each tensor's kept steps are rescaled), got "
                            f"{type(rescale).__name__} {rescale!r}")
        provenance = {**self.provenance, "cautious_mask": float(scale)}
        if rescale:
            provenance["cautious_rescale"] = True
        config = dataclasses.replace(self.config, cautious_scale=float(scale), cautious_rescale=rescale)
        new = CoordinatewiseLSTM(config, provenance=provenance).to(self.weight.dtype)
        new.load_state_dict(self.state_dict())  # the weights bit for bit (same dtype)
        return new

    def extra_repr(self) -> str:
        extra = ""
        if self.config.format_version > 1:
            extra = (f", sign_equivariant={self.config.sign_equivariant}, "
                     f"context_features={self.config.context_features}")
            if self.config.cautious_scale:
                extra += f", cautious_scale={self.config.cautious_scale}"
            if self.config.cautious_rescale:
                extra += ", cautious_rescale=True"
        return f"hidden_size={self.config.hidden_size}, features={self.config.features}{extra}"


def lstm_cell(
    features: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    context: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference LSTM cell, feature-major. Returns (y [2, N], h' [H, N], c' [H, N]).

    ``context`` ([K, N], or [K, 1] for one tensor's values; ``None`` when K = 0) enters the gates
    and the head as a bias: ``bias + W_ctx @ context`` and ``head_bias + head_ctx @ context``,
    which is how the fused kernels apply it (one bias vector per parameter tensor)."""
    hs = h.shape[0]
    if context is None or context.shape[0] == 0:
        gates = weight @ torch.cat([features, h], dim=0) + bias[:, None]
        y_bias = head_bias[:, None]
        head_h = head_weight
    else:
        nf, k = features.shape[0], context.shape[0]
        gate_bias = bias[:, None] + weight[:, nf : nf + k] @ context
        gates = torch.cat([weight[:, :nf], weight[:, nf + k :]], dim=1) @ torch.cat([features, h], dim=0) + gate_bias
        y_bias = head_bias[:, None] + head_weight[:, hs:] @ context
        head_h = head_weight[:, :hs]
    i = torch.sigmoid(gates[0:hs])
    f = torch.sigmoid(gates[hs : 2 * hs])
    g = torch.tanh(gates[2 * hs : 3 * hs])
    o = torch.sigmoid(gates[3 * hs : 4 * hs])
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    y = head_h @ h_new + y_bias
    return y, h_new, c_new
