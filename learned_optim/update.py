r"""The functional update: features -> coordinatewise LSTM -> step.

Two layers, like torch/optim/adam.py:

* ``lstm_rule`` is the maths, a pure differentiable function of one flat tensor's gradient and
  state. Meta-training backpropagates through it; every fast path is tested against it.
* ``learned_update`` applies the rule in place to lists of parameters and their state, with one
  signature for every implementation (``impl``):

  - ``"reference"``: ``lstm_rule`` per parameter tensor. Slow, obviously correct.
  - ``"eager"``: all coordinates of all tensors in one batched pass of torch ops over
    cache-sized chunks (``learned_optim.kernels.eager``); any device, any dtype.
  - ``"fused"``: the device's fused kernel (``learned_optim.kernels.FUSED_BACKENDS``), like
    torch's ``fused=True``: on CPU one C loop, one pass per coordinate with everything in
    registers (``kernels.cpu``; fp32/fp64, compiled with gcc at first use), on CUDA one Triton
    launch per group (``kernels.triton``). An error if it cannot update every tensor.
  - ``"auto"`` (default): the fused kernel for the tensors it covers, the eager loop for the
    rest (bf16/fp16 parameters on CPU, no compiler, no Triton).

  ``"torch"`` and ``"triton"``, the earlier names, still work with a ``FutureWarning``: ``"torch"``
  means ``"auto"`` on CPU and ``"eager"`` elsewhere, as it did; ``"triton"`` means ``"fused"``
  with the Triton kernel on any device (CPU tensors under ``TRITON_INTERPRET=1``).

  Each call prepares the rule once (``kernels.rule.prepare_rule``: plain weights in the compute
  dtype and the named constants) and the batch once (flat views, bias corrections); every backend
  receives both unchanged.

The speed of every CPU path: ``benchmarks/results/speed.md``.

The rule (per coordinate, step t counted from 1, all maths in fp32 or fp64):

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    d_t = \sqrt{v_t / (1-\beta_2^t)} + \epsilon,\qquad a_t = \frac{m_t / (1-\beta_1^t)}{d_t}
    \quad\text{(the Adam direction)}

    x_t = \mathrm{clip}([g_t/d_t,\ a_t], \pm C)\quad\text{(features, as listed in the config)}

    (h_t, c_t) = \mathrm{LSTMCell}(x_t, (h_{t-1}, c_{t-1})),\qquad y_t = W_y h_t + b_y \in \mathbb{R}^2

    u_t = a_t \exp(s \tanh y_{t,0}) + r \tanh y_{t,1},\qquad u_t = 0 \text{ where } v_t = 0

    p_t = p_{t-1}(1 - \eta\lambda) - \eta u_t

with :math:`\eta` the learning rate, :math:`\lambda` the decoupled weight decay, :math:`C`
``feature_clip``, :math:`s` ``log_scale_bound`` and :math:`r` ``direction_bound``. With a zero
output head (:math:`W_y = 0, b_y = 0`) the rule is exactly Adam(W). A coordinate whose gradient
has been exactly 0 at every step so far (:math:`v_t = 0`) does not move, apart from weight decay.

Format version 2 (``network.LSTMOptimizerConfig``) adds three options to the same rule:

* ``sign_equivariant``: with :math:`\sigma_t = \mathrm{sign}(m_t)` (0 where :math:`m_t = 0`),

  .. math::
      x_t = \mathrm{clip}(\sigma_t [g_t/d_t,\ a_t], \pm C),\qquad
      u_t = a_t \exp(s \tanh y_{t,0}) + \sigma_t\, r \tanh y_{t,1}

  so negating every gradient negates every step exactly (the LSTM sees the same inputs).
* ``cautious_scale`` :math:`\kappa > 0` (the cautious mask):

  .. math::
      u_t \leftarrow \kappa\, u_t\, \mathbb{1}[\mathrm{sign}(m_t)\,\mathrm{sign}(g_t) > 0]

  a coordinate whose momentum and gradient disagree in sign takes no step this time. With
  ``cautious_rescale`` each tensor's kept steps are multiplied by :math:`n / (k + 1)` as well,
  :math:`n` its number of values and :math:`k` the number the mask keeps at this step
  (``cautious_scales``: one count per tensor before the fused loop).
* ``context_features``: per-tensor values :math:`z \in \mathbb{R}^K` (``tensor_context``: the
  tensor's log RMS, log fan-in, whether it is a vector, the log size of the whole model, the log
  RMS of Adam's step from the moments before the step, whether it is a vector of a model above
  1e4 values, the log ratio of this step's gradient RMS to that of :math:`\sqrt{\hat v}` before
  it; ``network.CONTEXT_FEATURES`` defines each) enter as
  biases of the gates and the head, :math:`b + W_z z` and :math:`b_y + W_{yz} z`: the rule can
  size its steps per layer and per model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections import deque
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from . import kernels
from .kernels.eager import DEFAULT_CHUNK_SIZE, GPU_CHUNK_SIZE
from .kernels.rule import Batch, PreparedRule, compute_dtype, prepare_batch, prepare_rule, rule_betas, weights_dict
from .network import STATIC_FEATURES, LSTMOptimizerConfig, lstm_cell

__all__ = ["RuleOutput", "Sharding", "lstm_rule", "tensor_context", "flat_tensor_context", "flat_context",
           "cautious_agree", "cautious_scales", "flat_cautious_factor",
           "learned_update", "update_batch", "finite_flags", "finite_flags_and_norms",
           "finite_flags_on_device", "skips_on_device",
           "DeferredSkips", "all_ranks_min", "warn_skipped", "IMPLS", "DEFAULT_CHUNK_SIZE"]

IMPLS = ("auto", "reference", "eager", "fused")
# earlier impl names -> the name to use now (they still work, with a FutureWarning)
LEGACY_IMPLS = {"torch": "auto", "triton": "fused"}


class RuleOutput(NamedTuple):
    direction: Tensor  # [N] the unit-scale step u_t (the update is p -= lr * u_t)
    exp_avg: Tensor  # [N] m_t
    exp_avg_sq: Tensor  # [N] v_t
    h: Tensor  # [H, N]
    c: Tensor  # [H, N]


def lstm_rule(
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    h: Tensor,
    c: Tensor,
    step: float | Tensor,
    weights,
    config: LSTMOptimizerConfig,
    context: Tensor | None = None,
    cautious_factor: Tensor | float | None = None,
) -> RuleOutput:
    """The update rule for one flat tensor of N coordinates. Pure and differentiable.

    Args:
        grad, exp_avg, exp_avg_sq: [N]. ``exp_avg``/``exp_avg_sq`` are m_{t-1}, v_{t-1}.
        h, c: [H, N] LSTM state before this step.
        step: t, the number of this step (1 for the first), a float or a scalar tensor.
        weights: a ``CoordinatewiseLSTM`` or a mapping with its four tensors
            (``weight``, ``bias``, ``head_weight``, ``head_bias``), e.g. from ``torch.func``.
        config: the rule's constants.
        context: the per-tensor inputs when ``config.context_features`` is not empty: ``[K]``
            (one tensor's values, ``tensor_context``) or ``[K, N]`` (per coordinate, for a flat
            vector of several tensors). Default ``None`` (a rule without context features).
        cautious_factor: with ``config.cautious_rescale``, the rescale n / (k + 1) of the kept
            steps: a scalar, or ``[N]`` per coordinate for a flat vector of several tensors (or
            a shard of one: the count is the whole tensor's). Default ``None``: counted over
            ``grad`` itself, one whole tensor. Ignored by rules without the rescale.
    Returns:
        ``RuleOutput(direction, exp_avg, exp_avg_sq, h, c)``, all new tensors.
    """
    w = weights_dict(weights)
    b1, b2 = config.beta1, config.beta2
    m = exp_avg * b1 + grad * (1 - b1)
    v = exp_avg_sq * b2 + grad * grad * (1 - b2)
    bc1 = 1 - b1**step
    bc2 = 1 - b2**step
    # sqrt has an infinite derivative at 0, and a coordinate whose gradient is exactly 0 (a dead
    # ReLU, an always-zero input pixel) has v = 0: backpropagating through the inner gradient
    # (second-order meta-gradients) would then give inf * 0 = NaN. The double `where` keeps the
    # forward value exact and makes that derivative 0.
    pos = v > 0
    denom = torch.where(pos, torch.sqrt(torch.where(pos, v, 1.0) / bc2), 0.0) + config.eps
    adam = (m / bc1) / denom
    named = {"g_norm": grad / denom, "m_norm": adam}
    clip = config.feature_clip
    x = torch.stack([named[name] for name in config.features])
    if config.sign_equivariant:
        # sign-invariant inputs: a global sign flip of the gradients leaves the LSTM's inputs,
        # state and outputs unchanged (sign(0) = 0: a coordinate with m = 0 gets no additive step)
        sign = torch.sign(m)
        x = x * sign
    x = x.clamp(-clip, clip)
    if config.context_features:
        if context is None:
            raise ValueError(f"this rule has context_features {config.context_features}: pass context "
                             f"(update.tensor_context of the parameter tensor)")
        context = context.to(grad.dtype)
        context = context[:, None] if context.dim() == 1 else context
        if context.shape[0] != config.num_context:
            raise ValueError(f"context has {context.shape[0]} rows, this rule's context_features "
                             f"{config.context_features} need {config.num_context}: pass "
                             f"update.tensor_context's values")
    else:
        context = None
    y, h_new, c_new = lstm_cell(
        x, h, c, w["weight"], w["bias"], w["head_weight"], w["head_bias"], context
    )
    direction = adam * torch.exp(config.log_scale_bound * torch.tanh(y[0]))
    if config.sign_equivariant:
        direction = direction + config.direction_bound * torch.tanh(y[1]) * sign
    else:
        direction = direction + config.direction_bound * torch.tanh(y[1])
    # A coordinate whose gradient has been exactly 0 at every step so far (v_t = 0) does not move
    # (the head's r tanh(y_1) is not 0 at zero features). A select, not a product with a mask, so
    # a NaN elsewhere stays NaN; every backend makes the same select.
    direction = torch.where(v == 0, 0.0, direction)
    if config.cautious_scale:
        # the cautious mask: no step where the momentum and this gradient disagree in sign (or
        # either is 0), the other steps times the constant; a select, like the one above
        agree = cautious_agree(m, grad)
        scale = config.cautious_scale
        if config.cautious_rescale:
            if cautious_factor is None:  # a count has no gradient
                cautious_factor = grad.numel() / (agree.sum().to(torch.float64) + 1)
            scale = scale * torch.as_tensor(cautious_factor, dtype=torch.float64).to(grad.device, grad.dtype)
        direction = torch.where(agree, direction * scale, 0.0)
    return RuleOutput(direction, m, v, h_new, c_new)


def cautious_agree(exp_avg: Tensor, grad: Tensor) -> Tensor:
    """The cautious mask: where m_t (``exp_avg`` after this step's update) and ``grad`` have the same
    sign, both non-zero (bool, compared as signs: a product of two tiny values can round to 0)."""
    return torch.sign(exp_avg) * torch.sign(grad) > 0


def flat_cautious_factor(grads: Tensor, exp_avg: Tensor, shapes: Sequence[torch.Size],
                         config: LSTMOptimizerConfig) -> Tensor | None:
    """``lstm_rule``'s ``cautious_factor`` for a flat vector of the tensors of ``shapes``: ``[N]``,
    n / (k + 1) of the tensor that holds each coordinate, from this step's flat ``grads`` and
    the moment ``exp_avg`` before it; ``None`` for a rule without the rescale. No autograd."""
    if not config.cautious_rescale:
        return None
    key = tuple(tuple(s) for s in shapes)
    seg, numels = _segments(key, str(grads.device))
    with torch.no_grad():
        m = exp_avg * config.beta1 + grads * (1 - config.beta1)
        agree = cautious_agree(m, grads).to(torch.float64)
        kept = torch.zeros(len(key), dtype=torch.float64, device=grads.device).index_add(0, seg, agree)
        return (numels.to(torch.float64) / (kept + 1))[seg]


def cautious_scales(rule: PreparedRule, batch: Batch, fused=None, sharding: "Sharding | None" = None) -> Tensor:
    """Each tensor's multiplier of the steps the cautious mask keeps, ``[T]`` fp64 on the batch's
    device: ``cautious_scale * n / (k + 1)`` with ``n`` the tensor's size and ``k`` the number of
    its coordinates whose m_t and g_t agree in sign at this step (``LSTMOptimizerConfig
    .cautious_rescale``), from the batch before the update (steps counted, moments not yet
    updated). Counted by the fused backend ``fused`` where it has a count (the C loop's), else by
    foreach ops (``kernels.eager.count_agree``); ``sharding`` (default ``None``): the counts and
    sizes are the whole tensors', summed over every rank's shard."""
    counts = fused.count_agree(rule, batch) if fused is not None and hasattr(fused, "count_agree") else None
    if counts is None:
        counts = kernels.eager.count_agree(rule, batch)
    return rule.cautious_scale * _rescale_factors(counts, batch.numels, sharding)


def _rescale_factors(counts: Tensor, numels: Sequence[int], sharding: "Sharding | None") -> Tensor:
    """n / (k + 1) per tensor from the kept counts k of ``counts`` and the sizes ``numels``; with
    ``sharding`` the counts are summed over every rank's shard and n is the whole tensor's."""
    if sharding is not None:
        counts = sharding.sum_over_shards(counts[:, None])[:, 0]
        numels = [math.prod(s) for s in sharding.shapes]
    return torch.tensor(numels, dtype=torch.float64).to(counts.device) / (counts + 1)


class Sharding(NamedTuple):
    """How the tensors passed to ``tensor_context`` / ``learned_update`` are local shards of larger
    tensors (FSDP2's DTensor parameters), so that the per-tensor context is computed over the
    whole tensor, the same as in one process.

    Attributes:
        shapes: each tensor's global shape.
        dims: for each tensor, the mesh dimensions it is sharded over (``Shard`` placements);
            replicated dimensions are not summed over.
        mesh: the ``DeviceMesh`` the shards live on (one for all the tensors).
    """

    shapes: list[tuple[int, ...]]
    dims: list[tuple[int, ...]]
    mesh: Any

    def select(self, keep: Sequence[bool]) -> "Sharding":
        """The entries of the tensors whose ``keep`` flag is true."""
        return Sharding([s for s, k in zip(self.shapes, keep) if k], [d for d, k in zip(self.dims, keep) if k],
                        self.mesh)

    def sum_over_shards(self, x: Tensor) -> Tensor:
        """``x`` ``[T, C]``, per-tensor sums over each rank's shard: the sums over whole tensors
        (one all-reduce per sharded mesh dimension; every rank must call it with the same tensors)."""
        import torch.distributed as dist

        for dim in range(self.mesh.ndim):
            mask = torch.tensor([dim in d for d in self.dims], device=x.device)
            if mask.any():
                part = torch.where(mask[:, None], x, 0.0)
                dist.all_reduce(part, op=dist.ReduceOp.SUM, group=self.mesh.get_group(dim))
                x = torch.where(mask[:, None], part, x)
        return x


def tensor_context(params: Sequence[Tensor], config: LSTMOptimizerConfig, *,
                   dtype: torch.dtype | None = None, num_params: int | None = None,
                   exp_avgs: Sequence[Tensor] | None = None, exp_avg_sqs: Sequence[Tensor] | None = None,
                   state_steps: Sequence[Tensor | float] | None = None,
                   betas: tuple[float, float] | None = None, sharding: Sharding | None = None,
                   grads: Sequence[Tensor] | None = None, grad_norms: Sequence[Tensor] | None = None) -> Tensor:
    """The per-tensor context inputs of ``config.context_features`` (see ``network.CONTEXT_FEATURES``)
    for each tensor of ``params``: ``[len(params), K]``, computed without autograd in ``dtype``
    (default ``None``: fp64) on the tensors' device, with one foreach norm for all of them (in
    each tensor's own dtype: an fp64 accumulation costs ~7x more on CPU, and a log10 of an RMS
    needs no more precision). ``num_params`` is the model size the ``MODEL_SIZE_FEATURES`` read
    (default ``None``: the number of values in ``params``). ``exp_avgs``, ``exp_avg_sqs`` and
    ``state_steps`` (the moments and step counts before this step) and ``betas`` (default
    ``None``: the config's) are read by the ``MOMENT_FEATURES`` only, and needed by them;
    ``grads`` (default ``None``), this step's gradients, by the ``GRAD_FEATURES`` only, which then
    take the gradients' L2 norms from ``grad_norms`` (default ``None``: computed here) where given.
    ``sharding`` (default ``None``: the tensors are whole): the tensors are shards, and the
    statistics are summed over all of them (``Sharding``)."""
    params = list(params)
    dtype = torch.float64 if dtype is None else dtype
    num_params = _check_num_params(num_params, params, config.reads_model_size)
    if not params:
        return torch.zeros(0, config.num_context, dtype=dtype)
    if sharding is not None and len(sharding.shapes) != len(params):
        raise ValueError(f"sharding has {len(sharding.shapes)} shapes for {len(params)} tensors: one per tensor")
    reads_adam = "adam_log_rms" in config.context_features
    with torch.no_grad():
        norms = _stacked_norms(params, 2, dtype)
        adam = grad_ratio = None
        key = tuple(tuple(p.shape) for p in params)
        sums = []  # per-tensor sums, over every rank's shard when sharded
        if config.reads_moments:
            _check_moments(exp_avgs, exp_avg_sqs, state_steps, config, len(params))
        if reads_adam:  # per tensor: sum of squares of m / (sqrt(v_hat) + eps), and 1 / (1 - beta1^t)
            adam_sq, inv_bc1 = _adam_sums(exp_avgs, exp_avg_sqs, state_steps, config, betas)
            sums.append(adam_sq.to(norms.device, dtype))
        if config.reads_grads:  # per tensor: sum of g^2 and sum of v (v >= 0: its L1 norm)
            if grads is None or len(grads) != len(params):
                raise ValueError(f"context_features {config.context_features} read this step's gradients: pass "
                                 f"grads to tensor_context, one per parameter")
            g_norms = (_stack_norms(list(grad_norms), dtype) if grad_norms is not None
                       else _stacked_norms(grads, 2, dtype))
            sums += [g_norms ** 2, _stacked_sums(exp_avg_sqs, dtype)]
            steps = torch.stack([torch.as_tensor(s, dtype=torch.float64).to(norms.device) for s in state_steps])
        if sharding is not None:  # sums of squares over every rank's shard, then the global sizes
            key = tuple(tuple(s) for s in sharding.shapes)
            total = sharding.sum_over_shards(torch.stack([norms * norms] + sums, dim=1))
            norms, sums = total[:, 0].sqrt(), list(total[:, 1:].unbind(1))
        if reads_adam:  # -1 marks "before the first step" (an rms is never negative)
            n = torch.tensor([max(math.prod(s), 1) for s in key], dtype=torch.float64, device=norms.device)
            rms = (sums.pop(0).double() / n).sqrt() * inv_bc1.to(norms.device)
            adam = torch.where(inv_bc1.to(norms.device).isfinite(), rms, -1.0).to(dtype)
        if config.reads_grads:
            b2 = config.beta2 if betas is None else float(betas[1])
            grad_ratio = _grad_log_ratio(sums[0], sums[1], steps, b2, config.feature_clip).to(dtype)
    sqrt_n, _ = _static_context(key, str(norms.device), dtype)
    return _context_columns(norms / sqrt_n, key, config, num_params, adam, grad_ratio)


def _stacked_norms(tensors: Sequence[Tensor], order: int, dtype: torch.dtype) -> Tensor:
    """One foreach norm of every tensor (each in its own dtype), stacked in ``dtype``."""
    return _stack_norms(torch._foreach_norm(list(tensors), order), dtype)


def _stack_norms(norms: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """Scalar norms (each in its tensor's dtype) stacked in ``dtype``."""
    return torch.stack(norms if len({n.dtype for n in norms}) == 1 else [n.float() for n in norms]).to(dtype)


# A tensor this large or larger is summed on its own by ``_stacked_sums`` on CPU, where torch's foreach L1
# norm is not vectorized: 0.85 ms for 1e6 fp32 values on one thread against 0.06 ms for per-tensor sums,
# while for many small tensors one foreach call beats a call each
# (benchmarks/results/cautious/rescale-ratio/README.md, "Cost").
SUM_ONE_BY_ONE = 2**12


def _stacked_sums(tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """The sum of each tensor of non-negative values (its L1 norm), stacked in ``dtype``: each summed
    in its own dtype, at least fp32. On CPU the tensors of ``SUM_ONE_BY_ONE`` values or more are
    summed one by one, the others by one foreach norm per dtype; on other devices all by one foreach
    norm, each in its own dtype."""
    tensors = list(tensors)
    if not tensors or tensors[0].device.type != "cpu":
        return _stacked_norms(tensors, 1, dtype) if tensors else torch.zeros(0, dtype=dtype)
    sums: list[Tensor | None] = [None] * len(tensors)
    for dt in {t.dtype for t in tensors}:  # one foreach call per dtype for the small tensors
        small = [i for i, t in enumerate(tensors) if t.numel() < SUM_ONE_BY_ONE and t.dtype == dt]
        if small:
            norms = torch._foreach_norm([tensors[i] for i in small], 1, dtype=torch.promote_types(dt, torch.float32))
            for i, n in zip(small, norms):
                sums[i] = n.double()
    for i, t in enumerate(tensors):
        if sums[i] is None:
            sums[i] = t.sum(dtype=torch.promote_types(t.dtype, torch.float32)).double()
    return torch.stack(sums).to(dtype)


def _grad_log_ratio(g_sq: Tensor, v_sum: Tensor, steps: Tensor, beta2: float, clip: float) -> Tensor:
    """log10(rms(g) / rms(sqrt(v_hat))) per tensor from the sums of g^2 and of v over each tensor
    (the sizes cancel) and the steps done t (v_hat = v / (1 - beta2^t)): 0 before the first step
    (t = 0) and for a tensor whose gradients were all 0 so far (both sums 0), clipped to
    [-clip, clip] (a first non-zero gradient after zeros reads +clip)."""
    g_sq, v_sum, steps = g_sq.double(), v_sum.double().to(g_sq.device), steps.double().to(g_sq.device)
    tiny = torch.finfo(torch.float64).tiny
    num = (g_sq * (1 - beta2 ** steps)).clamp_min(tiny)
    value = (0.5 * (num.log10() - v_sum.clamp_min(tiny).log10())).clamp(-clip, clip)
    return torch.where(steps > 0, value, 0.0)


def _check_moments(exp_avgs, exp_avg_sqs, state_steps, config: LSTMOptimizerConfig, count: int) -> None:
    if exp_avgs is None or exp_avg_sqs is None or state_steps is None:
        raise ValueError(f"context_features {config.context_features} read the moments before the step: pass "
                         "exp_avgs, exp_avg_sqs and state_steps to tensor_context")
    if not len(exp_avgs) == len(exp_avg_sqs) == len(state_steps) == count:
        raise ValueError(f"tensor_context needs one exp_avg, exp_avg_sq and step per parameter: got "
                         f"{len(exp_avgs)}, {len(exp_avg_sqs)}, {len(state_steps)} for {count} parameters")


def _adam_sums(exp_avgs, exp_avg_sqs, state_steps, config: LSTMOptimizerConfig,
               betas: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """Per tensor, the sum of squares of m / (sqrt(v_hat) + eps) over the moments before the step
    and 1 / (1 - beta1^t) (inf before the first step, t = 0): rms(m_hat / (sqrt(v_hat) + eps)) is
    sqrt(sum / numel) times it, the sum taken over all shards of a sharded tensor first."""
    b1, b2 = (config.beta1, config.beta2) if betas is None else betas
    sums, inv_bc1 = [], []
    for m, v, s in zip(exp_avgs, exp_avg_sqs, state_steps):
        s = torch.as_tensor(s, dtype=torch.float64).to(m.device)
        # before the first step the corrections are 0: a NaN sum and an infinite 1/bc1, dropped by the caller
        denom = v.sqrt().div_((1 - b2 ** s).sqrt().to(v.dtype)).add_(config.eps)
        sums.append(torch.linalg.vector_norm(m / denom).double() ** 2)
        inv_bc1.append(1 / (1 - b1 ** s))
    return torch.stack(sums), torch.stack(inv_bc1)


def _check_num_params(num_params, params, needed: bool) -> int:
    if num_params is None:  # counted only for rules that read it (a Python loop, at every step)
        return sum(p.numel() for p in params) if needed else 0
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 0:
        raise ValueError(f"num_params must be a non-negative int (the number of values in all the parameters "
                         f"the optimizer updates), got {num_params!r}; pass None to count params")
    return num_params


@functools.lru_cache(maxsize=64)
def _static_context(shapes: tuple[tuple[int, ...], ...], device: str, dtype: torch.dtype) -> tuple[Tensor, dict]:
    """Per-tensor values that depend only on the shapes: sqrt(numel) and the shape features."""
    sqrt_n = torch.tensor([math.sqrt(max(math.prod(s), 1)) for s in shapes], dtype=dtype, device=device)
    fan = [math.log10(math.prod(s) / s[0]) if len(s) >= 2 and s[0] > 0 else 0.0 for s in shapes]
    cols = {"log_fan_in": torch.tensor(fan, dtype=dtype, device=device),
            "is_vector": torch.tensor([float(len(s) <= 1) for s in shapes], dtype=dtype, device=device)}
    return sqrt_n, cols


@functools.lru_cache(maxsize=64)
def _static_columns(shapes: tuple[tuple[int, ...], ...], device: str, dtype: torch.dtype, num_params: int,
                    clip: float) -> dict[str, Tensor]:
    """The columns of the ``network.STATIC_FEATURES``, which depend only on the shapes and the
    model's size: made once per model (at every step they were a handful of small ops, each a
    launch on a GPU), with the same ops, so the same values, as at every step."""
    _, shape = _static_context(shapes, device, dtype)
    size = min(max(math.log10(max(num_params, 1)) - 5.0, -clip), clip)
    return {"log_fan_in": shape["log_fan_in"].clamp(-clip, clip), "is_vector": shape["is_vector"].clamp(-clip, clip),
            "log_num_params": torch.full((len(shapes),), size, dtype=dtype, device=device),
            "log_num_params_capped": torch.full((len(shapes),), min(size, 0.0), dtype=dtype, device=device),
            # the vectors of models above 1e4 values, all of them from 1e5
            "is_vector_large": shape["is_vector"] * _large_model_ramp(num_params)}


def flat_tensor_context(params: Tensor, shapes: Sequence[torch.Size], config: LSTMOptimizerConfig,
                        moments: tuple[Tensor, Tensor, int] | None = None, grads: Tensor | None = None) -> Tensor:
    """``tensor_context`` for a flat vector of the tensors of ``shapes``, one row per tensor:
    ``[len(shapes), K]`` in ``params``' dtype. Differentiable in ``params``; a handful of ops
    whatever the number of tensors (it runs at every inner step of meta-training). ``moments``
    (``exp_avg``, ``exp_avg_sq``, the steps done), the flat moments before this step, are read by
    the ``MOMENT_FEATURES`` only and needed by them, and ``grads`` (default ``None``), this step's
    flat gradient, by the ``GRAD_FEATURES``; those features are statistics of the state and the
    gradient, computed without autograd (the rule's inputs g and m already carry their gradient)."""
    key = tuple(tuple(s) for s in shapes)
    seg, numels = _segments(key, str(params.device))
    if seg.numel() != params.numel():
        raise ValueError(f"shapes {list(shapes)} hold {seg.numel()} values, params has {params.numel()}")
    sq = torch.zeros(len(key), dtype=params.dtype, device=params.device).index_add(0, seg, params * params)
    # clamped: sqrt's derivative at 0 (a zero-initialised bias) is infinite
    rms = (sq / numels.to(params.dtype)).clamp_min(1e-30).sqrt()
    adam_rms = grad_ratio = None
    if config.reads_moments:
        if moments is None:
            raise ValueError(f"context_features {config.context_features} read the moments before the step: pass "
                             "moments=(exp_avg, exp_avg_sq, steps done)")
        m, v, step = moments
        with torch.no_grad():
            if "adam_log_rms" in config.context_features:
                if step <= 0:
                    adam_rms = torch.full((len(key),), -1.0, dtype=params.dtype, device=params.device)
                else:
                    bc1, bc2 = 1 - config.beta1 ** step, 1 - config.beta2 ** step
                    a = m / (v.sqrt() / math.sqrt(bc2) + config.eps)
                    asq = torch.zeros(len(key), dtype=a.dtype, device=a.device).index_add(0, seg, a * a)
                    adam_rms = ((asq / numels.to(a.dtype)).sqrt() / bc1).to(params.dtype)
            if config.reads_grads:
                if grads is None or grads.shape != params.shape:
                    raise ValueError(f"context_features {config.context_features} read this step's gradient: pass "
                                     f"grads, the flat gradient of params' shape {tuple(params.shape)}")
                # per-tensor norms and sums, as tensor_context: a third of the time of index_add's scatter
                sizes = [math.prod(s) for s in key]
                g_sq = _stacked_norms(grads.detach().split(sizes), 2, grads.dtype) ** 2
                v_sum = _stacked_sums(v.split(sizes), v.dtype)
                steps = torch.full((len(key),), float(step), dtype=torch.float64, device=params.device)
                grad_ratio = _grad_log_ratio(g_sq, v_sum, steps, config.beta2, config.feature_clip).to(params.dtype)
    return _context_columns(rms, key, config, params.numel(), adam_rms, grad_ratio)


def flat_context(params: Tensor, shapes: Sequence[torch.Size], config: LSTMOptimizerConfig,
                 moments: tuple[Tensor, Tensor, int] | None = None, grads: Tensor | None = None) -> Tensor:
    """``flat_tensor_context`` per coordinate: ``[K, N]``, column j the context of the tensor that
    holds coordinate j. Differentiable in ``params``."""
    seg, _ = _segments(tuple(tuple(s) for s in shapes), str(params.device))
    return flat_tensor_context(params, shapes, config, moments, grads).T[:, seg]


@functools.lru_cache(maxsize=64)
def _segments(shapes: tuple[tuple[int, ...], ...], device: str) -> tuple[Tensor, Tensor]:
    """The tensor index of every coordinate of a flat vector of ``shapes``, and their sizes."""
    numels = [math.prod(s) for s in shapes]
    seg = torch.repeat_interleave(torch.arange(len(shapes)), torch.tensor(numels, dtype=torch.long))
    return seg.to(device), torch.tensor([max(n, 1) for n in numels], device=device)


def _context_columns(rms: Tensor, shapes: tuple[tuple[int, ...], ...], config: LSTMOptimizerConfig,
                     num_params: int, adam_rms: Tensor | None = None, grad_ratio: Tensor | None = None) -> Tensor:
    clip = config.feature_clip
    static = _static_columns(shapes, str(rms.device), rms.dtype, num_params if config.reads_model_size else 0,
                             float(clip))
    cols = []
    for name in config.context_features:
        if name in STATIC_FEATURES:  # kept per model, clipped like every input
            cols.append(static[name])
        elif name == "p_log_rms":
            cols.append(torch.log10(rms + 1e-8).clamp(-clip, clip))
        elif name == "adam_log_rms":  # -1 marks "before the first step": 0 there (log10 1, the first step's rms)
            value = torch.log10(adam_rms.clamp_min(0) + 1e-8).clamp(-clip, clip)
            cols.append(torch.where(adam_rms < 0, 0.0, value))
        elif name == "grad_log_ratio":  # already clipped, 0 before the first step
            cols.append(grad_ratio)
        else:  # "grad_log_ratio_large": the ratio of models above 1e4 values, in full from 1e5
            cols.append(grad_ratio * _large_model_ramp(num_params))
    return torch.stack(cols, dim=1)


def _large_model_ramp(num_params: int) -> float:
    """clip(log10(P / 1e4), 0, 1): 0 for a model of 1e4 values or fewer, 1 from 1e5 values."""
    return min(max(math.log10(max(num_params, 1)) - 4.0, 0.0), 1.0)


def learned_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    lstm_hs: Sequence[Tensor],
    lstm_cs: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    weights,
    config: LSTMOptimizerConfig,
    lr: float,
    weight_decay: float,
    maximize: bool,
    impl: str = "auto",
    chunk_size: int | None = None,
    betas: tuple[float, float] | None = None,
    finite: Tensor | None = None,
    num_params: int | None = None,
    sharding: Sharding | None = None,
    grad_norms: Sequence[Tensor] | None = None,
) -> None:
    """Apply the learned rule in place to every tensor of the lists (see the module docstring).

    ``params`` must share a device. ``exp_avgs``, ``exp_avg_sqs`` have the shape of their
    parameter, ``lstm_hs``/``lstm_cs`` shape ``[H, *p.shape]``. State is normally in the compute
    dtype (fp64 for fp64 params, else fp32); any other floating dtype (e.g. bf16 LSTM state) is
    read and written with one rounding, the maths staying in the compute dtype. ``state_steps``
    are scalar float tensors, incremented here. Runs without autograd.

    ``betas`` (default ``None``: ``(config.beta1, config.beta2)``) are the moments' decays
    :math:`\beta_1, \beta_2`, also in the bias corrections. ``finite`` (default ``None``: update
    every tensor) is one flag per tensor on the parameters' device (``finite_flags_on_device``);
    a tensor whose flag is false is left untouched. Where ``skips_on_device(impl, device)`` (the
    Triton kernel) the flags go to the kernel and nothing is read on the host, but then *every*
    step count is incremented (the caller takes back those of skipped tensors once it reads the
    flags; ``LearnedOptimizer`` does); on every other path the flags are read here and skipped
    tensors keep their step count.

    ``chunk_size`` (default ``None``: ``kernels.eager.default_chunk_size`` of the device, 8192 on CPU
    and 2^20 elsewhere) is the eager loop's chunk; the other paths ignore it.

    ``num_params`` (default ``None``: the number of values in ``params``) is the size of the whole
    model for the context features that read it (``network.MODEL_SIZE_FEATURES``): ``LearnedOptimizer``
    passes the count over all its param groups, so the rule does not change with how the tensors
    are split between calls. ``sharding`` (default ``None``): the tensors are local shards of
    FSDP2 parameters (``Sharding``); the per-tensor context is then computed over the whole
    tensors, one all-reduce per step. ``grad_norms`` (default ``None``: computed where needed) are
    the L2 norms of ``grads``, one scalar tensor each, when the caller already has them
    (``finite_flags_and_norms``, ``LearnedOptimizer``'s non-finite check): the context inputs that
    read this step's gradients (``network.GRAD_FEATURES``) take them instead of a second pass over
    the gradients.
    """
    if not params:
        return
    if impl not in IMPLS and impl not in LEGACY_IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    lists = (grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps)
    if grad_norms is not None and len(grad_norms) != len(params):
        raise ValueError(f"grad_norms needs one norm per parameter: got {len(grad_norms)} for {len(params)} "
                         f"parameters (pass None to compute them)")
    if any(len(lst) != len(params) for lst in lists):
        raise ValueError(
            "learned_update needs one entry per parameter in every list: got lengths "
            f"params={len(params)}, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps="
            f"{[len(lst) for lst in lists]}"
        )
    device = params[0].device
    impl, fused = _resolve(impl, device)
    if impl != "reference":
        check_chunk_size(chunk_size)
    if finite is not None and not _device_flags(impl, fused, device):
        # a path that needs the flags on the host: read them, drop the skipped tensors
        keep = finite.bool().tolist()
        if len(keep) != len(params):
            raise ValueError(f"finite needs one flag per parameter: got {len(keep)} for {len(params)} parameters")
        if not all(keep):
            params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps = (
                [t for t, ok in zip(lst, keep) if ok] for lst in (params, *lists))
            sharding = sharding.select(keep) if sharding is not None else None
            grad_norms = [n for n, ok in zip(grad_norms, keep) if ok] if grad_norms is not None else None
            if not params:
                return
        finite = None
    kw = dict(weights=weights, config=config, lr=lr, weight_decay=weight_decay, maximize=maximize, betas=betas)
    with torch.no_grad():
        # the per-tensor context of the parameters before this step, the same for every impl
        context = None
        if config.context_features:
            context = tensor_context(params, config, num_params=num_params, exp_avgs=exp_avgs,
                                     exp_avg_sqs=exp_avg_sqs, state_steps=state_steps, betas=betas,
                                     sharding=sharding, grads=grads, grad_norms=grad_norms)
        torch._foreach_add_(list(state_steps), 1)
        if impl == "reference":
            factors = None
            if config.cautious_rescale and sharding is not None:
                # the rescale counts over the whole tensor, every rank's shard (lstm_rule alone sees one)
                counts = kernels.eager.count_agree_lists(grads, exp_avgs, rule_betas(config, betas)[0], maximize)
                factors = _rescale_factors(counts, [p.numel() for p in params], sharding).unbind()
            _reference_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, context=context,
                              factors=factors,
                              **kw)
            return
        cdt = compute_dtype(params[0].dtype)
        if any(compute_dtype(p.dtype) != cdt for p in params):
            raise ValueError(
                f"learned_update(impl={impl!r}) needs parameters of one compute dtype per call: "
                "call it separately for fp64 and for fp32/bf16/fp16 parameters"
            )
        rule = prepare_rule(weights, config, device=device, dtype=cdt, lr=lr, weight_decay=weight_decay,
                            maximize=maximize, betas=betas)
        batch = prepare_batch(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, config=config,
                              betas=betas, finite=finite, rule=rule, context=context)
        update_batch(rule, batch, impl=impl, fused=fused, chunk_size=chunk_size, sharding=sharding)


def update_batch(rule: PreparedRule, batch: Batch, *, impl: str, fused=None, chunk_size: int | None = None,
                 sharding: Sharding | None = None) -> None:
    """Apply a prepared rule in place to a prepared batch (``kernels.rule``), steps already
    counted: ``learned_update`` after its checks and preparation, for callers that hold flat
    buffers (the graph-free inner step of meta-training, ``meta.inner.inner_step``). ``impl`` is
    ``"auto"``, ``"fused"`` or ``"eager"`` (not ``"reference"``: that one runs ``lstm_rule`` on
    the tensors themselves); ``fused`` is the device's fused backend (``None``: the one
    ``kernels.FUSED_BACKENDS`` has for the batch's device). A rule with the cautious rescale gets
    the batch's ``cautious`` multipliers here unless they are set (``cautious_scales``, with
    ``sharding``, default ``None``: whole tensors). Runs without autograd."""
    if impl not in ("auto", "fused", "eager"):
        raise ValueError(f"update_batch: impl must be 'auto', 'fused' or 'eager', got {impl!r}")
    device = batch.tensors[0][0].device if batch.numels else torch.device("cpu")
    if fused is None:
        fused = kernels.FUSED_BACKENDS.get(device.type)
    todo = [i for i, n in enumerate(batch.numels) if n > 0]
    with torch.no_grad():
        if rule.cautious_rescale and batch.cautious is None:
            batch.cautious = cautious_scales(rule, batch, fused if impl != "eager" else None, sharding)
        if impl != "eager" and todo:
            # a backend declares the format-2 rule (sign equivariance, the cautious mask, per-tensor
            # biases) with V2
            needs_v2 = rule.v2 or batch.gate_bias is not None
            v2_ok = fused is not None and (not needs_v2 or getattr(fused, "V2", False))
            done = fused.select(rule, batch, todo) if v2_ok else []
            if impl == "fused" and len(done) < len(todo):
                why = "no fused kernel exists for this device" if fused is None else (
                    f"{fused.NAME} does not implement format version 2 rules" if not v2_ok else
                    f"{fused.NAME} cannot update {len(todo) - len(done)} of the {len(todo)} tensors: "
                    f"{fused.unavailable_reason(rule)}")
                raise RuntimeError(f"impl='fused' cannot run on {device}: {why}; use impl='auto' (the fused "
                                   f"kernel where it applies, else the eager loop) or impl='eager'")
            if done:
                fused.update(rule, batch, done)
                covered = set(done)
                todo = [i for i in todo if i not in covered]
        if todo:
            kernels.eager.update(rule, batch, todo, chunk_size)
        batch.finish()


def check_chunk_size(chunk_size) -> None:
    """A ``ValueError`` naming the fix unless ``chunk_size`` is ``None`` or a positive int."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}; the default None takes "
                         f"{DEFAULT_CHUNK_SIZE} on CPU and {GPU_CHUNK_SIZE} on other devices")


def _resolve(impl: str, device: torch.device):
    """(impl, fused backend) after mapping the earlier names, with their FutureWarning."""
    fused = kernels.FUSED_BACKENDS.get(device.type)
    if impl in LEGACY_IMPLS:
        warnings.warn(f"learned_update: impl={impl!r} is deprecated, use impl={LEGACY_IMPLS[impl]!r} "
                      f"(see the learned_optim.update docstring)", FutureWarning, stacklevel=3)
        if impl == "torch":  # the chunk loop, with the C loop for what it covers on CPU; never Triton
            impl = "auto" if device.type == "cpu" else "eager"
        else:
            impl, fused = "fused", kernels.triton
    return impl, fused


def _device_flags(impl: str, fused, device: torch.device) -> bool:
    return (impl in ("auto", "fused") and fused is not None and getattr(fused, "DEVICE_FLAGS", False)
            and fused.available(device))


def skips_on_device(impl: str, device: torch.device | str) -> bool:
    """Whether ``learned_update(impl=impl, finite=...)`` on ``device`` applies the finite flags on
    the device without reading them (the Triton kernel: CUDA, or CPU tensors under its
    interpreter when a test maps ``FUSED_BACKENDS["cpu"]`` to it). Never warns."""
    device = torch.device(device)
    fused = kernels.FUSED_BACKENDS.get(device.type)
    if impl == "triton":
        impl, fused = "fused", kernels.triton
    return _device_flags(impl, fused, device)


def finite_flags(grads: Sequence[Tensor]) -> Tensor:
    """Bool tensor, one entry per gradient: True where it has no NaN or inf. Exact; it reads the
    norms on the host (the CPU paths' check; ``finite_flags_on_device`` reads nothing).

    A drop-in for a ``torch._foreach_norm(grads, inf)`` test, which measured 2.6 ms for 1e6 fp32 coordinates on one
    core of the benchmark machine against 0.12 ms for the L2 norm used here (the inf-norm takes a
    slow path in torch 2.13 on CPU). A gradient with a NaN or inf has a non-finite L2 norm; a
    finite one has a finite norm unless its sum of squares overflows, so every non-finite norm
    is re-checked exactly with ``isfinite`` (only for those tensors: normally none).
    """
    return finite_flags_and_norms(grads)[0]


def finite_flags_and_norms(grads: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """``finite_flags(grads)`` and the L2 norms it read, one scalar tensor per gradient in its dtype
    (what ``learned_update``'s ``grad_norms`` takes)."""
    norms = torch._foreach_norm(list(grads), 2)
    ok = torch.isfinite(torch.stack([n.float() for n in norms]))
    if not bool(ok.all()):
        for i in (~ok).nonzero().flatten().tolist():
            ok[i] = bool(torch.isfinite(grads[i]).all())
    return ok, list(norms)


def finite_flags_on_device(grads: Sequence[Tensor]) -> Tensor:
    """Like ``finite_flags`` (exact, bool, one per gradient, on the gradients' device) with no host
    read, so the launch queue never waits. The L2 norms are accumulated in fp64: for fp32, bf16 and
    fp16 gradients the sum of squares cannot overflow (at most 2^40 x 1.2e77), so a non-finite norm
    means a NaN or inf. fp64 gradients can overflow it; there a non-finite L2 norm with a finite
    inf-norm is a finite gradient (a NaN makes the L2 norm NaN, so a max that skips NaN does not
    matter)."""
    grads = list(grads)
    if all(g.dtype == torch.float64 for g in grads):
        l2 = torch.stack(torch._foreach_norm(grads, 2))
        linf = torch.stack(torch._foreach_norm(grads, float("inf")))
        return torch.isfinite(l2) | (torch.isinf(l2) & torch.isfinite(linf))
    return torch.isfinite(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)))


def all_ranks_min(ok: Tensor, mesh) -> Tensor:
    """Sharded (FSDP2) parameters: a NaN in any rank's shard skips the whole parameter on every
    rank, so the shards never disagree about whether a step happened. One all-reduce of an int32
    flag per tensor, on the device (no host read); the other cross-rank statistic is the
    per-tensor context of rules that have one (``Sharding.sum_over_shards``)."""
    if mesh is not None:
        import torch.distributed as dist

        for dim in range(mesh.ndim):
            dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=mesh.get_group(dim))
    return ok


def warn_skipped(n: int, when: str) -> None:
    warnings.warn(f"LearnedOptimizer: {n} parameter(s) had non-finite gradients (NaN or inf){when}; their "
                  f"update was skipped, values and state unchanged", RuntimeWarning, stacklevel=4)


def _host_copy(flags: Tensor) -> tuple[Tensor, Any]:
    """A host copy of device flags made without waiting (pinned memory, non-blocking) and the event
    after which it may be read; on other devices a plain copy and no event."""
    if flags.device.type != "cuda":
        return flags.to("cpu", copy=True), None
    host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
    host.copy_(flags, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(flags.device))
    return host, event


class DeferredSkips:
    """Device-side non-finite checks (``learned_update(finite=...)`` on the Triton path) whose flags
    the host has not read yet, one entry per ``step()`` that ran any: a host copy of the flags
    (pinned, non-blocking), its event, and the step tensors of the checked parameters.

    ``settle`` reads the entries whose device work has finished (all of them, waiting, with
    ``block=True``): one ``RuntimeWarning`` per step that skipped any parameter, and the skipped
    parameters' step counts, which ``learned_update`` incremented without reading the flags,
    taken back. A step whose device work is still running stays pending (in order)."""

    def __init__(self) -> None:
        self.pending: deque = deque()
        self.calls = 0

    def record(self, checks: list[tuple[Tensor, list[Tensor]]]) -> None:
        """One ``step()`` call's checks: (device flags, step tensors) per bucket."""
        self.calls += 1
        if checks:
            self.pending.append((self.calls, [(*_host_copy(ok), steps) for ok, steps in checks]))

    def settle(self, block: bool) -> None:
        while self.pending:
            call, parts = self.pending[0]
            if not block and not all(event is None or event.query() for _, event, _ in parts):
                return
            n_bad = 0
            for host, event, steps in parts:
                if event is not None:
                    event.synchronize()
                # the host copy, read as host memory (numpy) once its copy has completed
                for i in (host.numpy() == 0).nonzero()[0]:
                    steps[i].sub_(1)
                    n_bad += 1
            self.pending.popleft()
            if n_bad:
                warn_skipped(n_bad, f" at step() call {call} (checked on the device, reported now)")


def _reference_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, *,
                      weights, config, lr, weight_decay, maximize, betas, context, factors=None) -> None:
    if betas is not None and tuple(map(float, betas)) != (config.beta1, config.beta2):
        config = dataclasses.replace(config, beta1=float(betas[0]), beta2=float(betas[1]))
    w = weights_dict(weights)
    hs = config.hidden_size
    decay = 1 - lr * weight_decay
    for i, (p, g, m, v, h, c, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs,
                                                      state_steps)):
        cdt = compute_dtype(p.dtype)
        wc = {k: t.detach().to(cdt) for k, t in w.items()}
        g = g.reshape(-1).to(cdt)
        if maximize:
            g = -g
        out = lstm_rule(g, m.reshape(-1).to(cdt), v.reshape(-1).to(cdt), h.reshape(hs, -1).to(cdt),
                        c.reshape(hs, -1).to(cdt), step.item(), wc, config,
                        None if context is None else context[i].to(cdt), None if factors is None else factors[i])
        m.copy_(out.exp_avg.view_as(m))
        v.copy_(out.exp_avg_sq.view_as(v))
        h.copy_(out.h.view_as(h))
        c.copy_(out.c.view_as(c))
        # Decoupled weight decay and the step in the compute dtype, one rounding to p's dtype.
        p.copy_((p.to(cdt) * decay - lr * out.direction.view_as(p)).to(p.dtype))
