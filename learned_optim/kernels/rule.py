"""What every backend of the batched update receives: the prepared rule and the batch of tensors.

``prepare_rule`` turns the network and the step's hyperparameters into a ``PreparedRule``: the
plain weights in the compute dtype on the parameters' device (no backend-specific scaling: each
backend folds its own constants in, inside its own module) and the rule's named constants as
Python floats (double precision; ``1 - beta1`` and ``1 - beta2`` computed here in double, since
``1 - 0.999`` rounded in fp32 is off by 1.3e-5; ``betas`` of the call, e.g. a param group's, else
the config's). ``prepare_batch`` flattens the tensor lists into contiguous views and computes the
per-tensor bias corrections with the same betas. Both are built once per call of
``learned_update`` (the weights' part of the rule is kept between calls while the weights do not
change) and handed, unchanged, to every backend (``eager``, ``cpu``, ``triton``).

Also here, because more than one module needs them: ``compute_dtype``, ``weights_dict``,
``FEATURE_KINDS`` and ``chunk_plan`` (the walk over concatenated tensors that the eager loop
chunks with and the C loop splits across threads with).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from ..network import LSTMOptimizerConfig

__all__ = ["FEATURE_KINDS", "PreparedRule", "Batch", "compute_dtype", "weights_dict", "prepare_rule",
           "prepare_batch", "chunk_plan", "host_to", "rule_betas"]

# Feature name -> the kind number the fused kernels select a feature by (C: lo_rule.kind0/kind1,
# Triton: the KIND0/KIND1 constexprs): 0 = g / d (the normalized gradient), 1 = the Adam direction.
FEATURE_KINDS = {"g_norm": 0, "m_norm": 1}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the rule's maths runs in for parameters of ``dtype``: fp64 parameters keep fp64
    maths (that is how fast paths are checked against the reference); everything else (fp32,
    bf16, fp16) computes in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def weights_dict(weights) -> Mapping[str, Tensor]:
    """The four tensors of a ``CoordinatewiseLSTM`` (or a mapping with them) by name."""
    if isinstance(weights, Mapping):
        return weights
    return {
        "weight": weights.weight,
        "bias": weights.bias,
        "head_weight": weights.head_weight,
        "head_bias": weights.head_bias,
    }


class PreparedRule(NamedTuple):
    """The rule for one call: plain weights (compute dtype, parameters' device, contiguous) and
    the constants. Backends read it and never modify it."""

    hidden_size: int
    num_features: int
    dtype: torch.dtype  # the compute dtype
    weight: Tensor  # [4H, F+H] gates i, f, g, o over [features; h] (context columns taken out)
    bias: Tensor  # [4H]  (a Batch with context carries per-tensor gate biases instead)
    head_weight: Tensor  # [2, H]
    head_bias: Tensor  # [2]  (likewise per tensor with context)
    beta1: float
    beta2: float
    one_minus_beta1: float
    one_minus_beta2: float
    eps: float
    feature_clip: float
    lr: float
    decay: float  # 1 - lr * weight_decay
    log_scale_bound: float
    direction_bound: float
    maximize: bool
    feature_kinds: tuple[int, ...]  # FEATURE_KINDS of config.features, in input order
    sign_equivariant: bool = False  # features and additive direction times sign(m_t) (format 2)
    context_weight: Tensor | None = None  # [4H, K] gate weights of the per-tensor context (format 2)
    head_context_weight: Tensor | None = None  # [2, K] head weights of the context
    cautious_scale: float = 0.0  # > 0: the cautious mask (format 2), the kept steps times this
    # and, with the rescale, times n / (k + 1) per tensor too: Batch.cautious holds the products
    cautious_rescale: bool = False

    @property
    def v2(self) -> bool:
        """Whether the rule itself needs a format-2 kernel (a batch with per-tensor biases does too)."""
        return bool(self.sign_equivariant) or self.cautious_scale > 0


def host_to(t: Tensor, device: torch.device) -> Tensor:
    """A host-built tensor on ``device`` without waiting: pinned memory, non-blocking copy."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


# The rule's weights as the backends read them (compute dtype, the parameters' device, the context
# columns split out), keyed by the source tensors' identity and version and the split: built once
# per weights, not at every step (a pageable CPU->GPU copy every step would block the host, and on
# a GPU each of the split's copies and casts is a launch). Weights changed in place hit only until
# their version moves, as every torch in-place op moves it; inference tensors, which have no
# version, are prepared at every call.
_PREPARED_WEIGHTS: dict[tuple, tuple[dict, dict[str, Tensor | None]]] = {}


def _weights_on(w: Mapping[str, Tensor], device: torch.device, cdt: torch.dtype,
                config: LSTMOptimizerConfig) -> dict[str, Tensor | None]:
    nf, k, hs = config.num_features, config.num_context, config.hidden_size
    key = None
    if not any(t.is_inference() for t in w.values()):
        key = (str(device), cdt, nf, k, hs) + tuple((name, id(t), t._version) for name, t in sorted(w.items()))
    hit = _PREPARED_WEIGHTS.get(key) if key is not None else None
    if hit is None:
        out: dict[str, Tensor | None] = {
            name: host_to(t.detach().to(dtype=cdt).contiguous(), device) if t.device.type == "cpu"
            else t.detach().to(device=device, dtype=cdt).contiguous() for name, t in w.items()}
        out["context_weight"] = out["head_context_weight"] = None
        if k:  # context columns out: they become per-tensor biases (prepare_batch)
            weight, head_weight = out["weight"], out["head_weight"]
            out["context_weight"] = weight[:, nf : nf + k]
            out["weight"] = torch.cat([weight[:, :nf], weight[:, nf + k :]], dim=1).contiguous()
            out["head_context_weight"] = head_weight[:, hs:]
            out["head_weight"] = head_weight[:, :hs].contiguous()
        if key is None:
            return out
        if len(_PREPARED_WEIGHTS) > 8:  # bounded: stale versions are dropped wholesale
            _PREPARED_WEIGHTS.clear()
        # keep the source tensors alive so that their ids in the key cannot be reused
        hit = _PREPARED_WEIGHTS[key] = (dict(w), out)
    return hit[1]


def rule_betas(config: LSTMOptimizerConfig, betas: tuple[float, float] | None) -> tuple[float, float]:
    """``betas`` as two Python floats, or the config's when ``None``."""
    b1, b2 = (config.beta1, config.beta2) if betas is None else betas
    return float(b1), float(b2)


def prepare_rule(weights, config: LSTMOptimizerConfig, *, device: torch.device, dtype: torch.dtype, lr: float,
                 weight_decay: float, maximize: bool, betas: tuple[float, float] | None = None) -> PreparedRule:
    """The rule for one call of the batched update, in compute dtype ``dtype`` on ``device``;
    ``betas`` (default ``None``: the config's) are the moments' decays."""
    w = _weights_on(weights_dict(weights), torch.device(device), dtype, config)
    b1, b2 = rule_betas(config, betas)
    return PreparedRule(
        hidden_size=config.hidden_size, num_features=config.num_features, dtype=dtype,
        weight=w["weight"], bias=w["bias"], head_weight=w["head_weight"], head_bias=w["head_bias"],
        beta1=b1, beta2=b2, one_minus_beta1=1 - b1, one_minus_beta2=1 - b2, eps=float(config.eps),
        feature_clip=float(config.feature_clip), lr=float(lr), decay=1.0 - lr * weight_decay,
        log_scale_bound=float(config.log_scale_bound), direction_bound=float(config.direction_bound),
        maximize=bool(maximize), feature_kinds=tuple(FEATURE_KINDS[f] for f in config.features),
        sign_equivariant=config.sign_equivariant, context_weight=w["context_weight"],
        head_context_weight=w["head_context_weight"], cautious_scale=float(config.cautious_scale),
        cautious_rescale=config.cautious_rescale,
    )


@dataclass
class Batch:
    """Every tensor of one call, contiguous: ``tensors`` is the lists (p, g, m, v, h, c), each
    tensor in its own shape (h and c ``[H, *p.shape]``); ``p`` ... ``c`` are their flat views
    (``h``/``c`` as ``[H, n]``), made on first use (the C loop reads only the tensors' addresses,
    ``sources``, and a view per tensor and list costs ~1 us of Python at every step). Each tensor's
    bias corrections ``ib1`` = 1/(1-b1^t) and ``sib2`` = sqrt(1/(1-b2^t)) as floats (tensors may
    be at different steps). ``g`` is read only. A non-contiguous tensor is updated through a
    contiguous copy that ``finish()`` writes back. ``finite``: ``None``, or int32 flags on the
    device, one per tensor, 0 where the tensor must be left untouched (only backends with
    ``DEVICE_FLAGS`` receive a batch with flags)."""

    tensors: tuple[list[Tensor], ...]
    ib1: list[float]
    sib2: list[float]
    numels: list[int]
    writebacks: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    finite: Tensor | None = None
    # format 2 rules with context: per-tensor biases replacing the rule's bias / head_bias, in the
    # compute dtype on the device, contiguous: gate_bias [T, 4H] = bias + W_ctx z_i, head_bias
    # [T, 2] = head_bias + W_yz z_i for tensor i's context z_i; None without context
    gate_bias: Tensor | None = None
    head_bias: Tensor | None = None
    # rules with the cautious rescale: each tensor's multiplier of its kept steps, [T] fp64 on the
    # device (update.cautious_scales, set by update.update_batch); None otherwise
    cautious: Tensor | None = None
    _views: dict[int, list[Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def _flat(self, k: int) -> list[Tensor]:
        if k not in self._views:  # p, g, m, v as [n]; h, c as [H, n]
            self._views[k] = [t.view(-1) if k < 4 else t.view(t.shape[0], -1) for t in self.tensors[k]]
        return self._views[k]

    p = property(lambda self: self._flat(0))
    g = property(lambda self: self._flat(1))
    m = property(lambda self: self._flat(2))
    v = property(lambda self: self._flat(3))
    h = property(lambda self: self._flat(4))
    c = property(lambda self: self._flat(5))

    def rows_of(self, table: Tensor, idx: Sequence[int]) -> Tensor:
        """The rows of a per-tensor ``table`` (``[T, ...]`` on any device) for the tensors ``idx``:
        the table itself when ``idx`` is every tensor, else a gather on the table's device."""
        if list(idx) == list(range(len(self.numels))):
            return table
        return table.index_select(0, host_to(torch.tensor(list(idx), dtype=torch.int64), table.device))

    def finite_of(self, idx: Sequence[int]) -> Tensor | None:
        """The flags of the tensors ``idx`` (``rows_of``), or ``None`` without flags."""
        return None if self.finite is None else self.rows_of(self.finite, idx)

    def sources(self, idx: Sequence[int]) -> tuple[list[Tensor], ...]:
        """(p, g, m, v, h, c) of the tensors ``idx`` as they are (contiguous, not flattened)."""
        return tuple([lst[i] for i in idx] for lst in self.tensors)

    def cautious_of(self, idx: Sequence[int], rule: PreparedRule) -> list[float] | Tensor:
        """The kept steps' multipliers of the tensors ``idx``: the batch's per-tensor ones in the
        compute dtype (``rows_of``), else the rule's constant ``cautious_scale`` for each."""
        if self.cautious is None:
            return [rule.cautious_scale] * len(idx)
        return self.rows_of(self.cautious, idx).to(rule.dtype)

    def finish(self) -> None:
        for dst, src in self.writebacks:
            dst.copy_(src.view_as(dst))


def prepare_batch(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, *,
                  config: LSTMOptimizerConfig, betas: tuple[float, float] | None = None,
                  finite: Tensor | None = None, rule: PreparedRule | None = None,
                  context: Tensor | None = None) -> Batch:
    """The contiguous tensors and bias corrections of ``learned_update``'s lists (steps already
    counted), with ``betas`` (default: the config's); ``finite``: see ``Batch``; ``context`` ``[T, K]``
    (``update.tensor_context``, default ``None``) with the ``rule`` gives the per-tensor biases."""
    writebacks: list[tuple[Tensor, Tensor]] = []

    def contiguous(t: Tensor, write_back: bool = True) -> Tensor:
        # memory proportional to this tensor only; rare in practice
        tmp = t.contiguous()
        if write_back:
            writebacks.append((t, tmp))
        return tmp

    b1, b2 = rule_betas(config, betas)
    gate_bias = head_bias = None
    if context is not None:
        if rule is None or rule.context_weight is None:
            raise ValueError("prepare_batch: context needs the prepared rule of a config with context_features")
        z = context.to(device=rule.bias.device, dtype=rule.dtype).T  # [K, T]
        gate_bias = (rule.bias[:, None] + rule.context_weight @ z).T.contiguous()
        head_bias = (rule.head_bias[:, None] + rule.head_context_weight @ z).T.contiguous()
    steps = [float(s) for s in state_steps]  # CPU step tensors (as torch.optim.Adam): no sync
    # (the check inline: this runs for every tensor of every list at every step)
    tensors = tuple([t if t.is_contiguous() else contiguous(t) for t in lst]
                    for lst in (params, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs))
    return Batch(
        tensors=(tensors[0], [t if t.is_contiguous() else contiguous(t, write_back=False) for t in grads],
                 *tensors[1:]),
        ib1=[1.0 / (1 - b1**t) for t in steps], sib2=[(1.0 / (1 - b2**t)) ** 0.5 for t in steps],
        numels=[p.numel() for p in params], writebacks=writebacks,
        finite=None if finite is None else finite.to(torch.int32), gate_bias=gate_bias, head_bias=head_bias,
    )


def chunk_plan(numels: Sequence[int], chunk_size: int) -> list[list[tuple[int, int, int]]]:
    """Split the concatenation of tensors of sizes ``numels`` into chunks of <= chunk_size
    coordinates; each chunk is a list of segments (tensor index, start, end)."""
    chunks, cur, room = [], [], chunk_size
    for i, n in enumerate(numels):
        start = 0
        while start < n:
            take = min(room, n - start)
            cur.append((i, start, start + take))
            start += take
            room -= take
            if room == 0:
                chunks.append(cur)
                cur, room = [], chunk_size
    if cur:
        chunks.append(cur)
    return chunks

