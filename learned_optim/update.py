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

    u_t = a_t \exp(s \tanh y_{t,0}) + r \tanh y_{t,1}

    p_t = p_{t-1}(1 - \eta\lambda) - \eta u_t

with :math:`\eta` the learning rate, :math:`\lambda` the decoupled weight decay, :math:`C`
``feature_clip``, :math:`s` ``log_scale_bound`` and :math:`r` ``direction_bound``. With a zero
output head (:math:`W_y = 0, b_y = 0`) the rule is exactly Adam(W).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from . import kernels
from .kernels.eager import DEFAULT_CHUNK_SIZE
from .kernels.rule import compute_dtype, prepare_batch, prepare_rule, weights_dict
from .network import LSTMOptimizerConfig, lstm_cell

__all__ = ["RuleOutput", "lstm_rule", "learned_update", "finite_flags", "IMPLS", "DEFAULT_CHUNK_SIZE"]

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
) -> RuleOutput:
    """The update rule for one flat tensor of N coordinates. Pure and differentiable.

    Args:
        grad, exp_avg, exp_avg_sq: [N]. ``exp_avg``/``exp_avg_sq`` are m_{t-1}, v_{t-1}.
        h, c: [H, N] LSTM state before this step.
        step: t, the number of this step (1 for the first), a float or a scalar tensor.
        weights: a ``CoordinatewiseLSTM`` or a mapping with its four tensors
            (``weight``, ``bias``, ``head_weight``, ``head_bias``), e.g. from ``torch.func``.
        config: the rule's constants.
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
    x = torch.stack([named[name] for name in config.features]).clamp(-clip, clip)
    y, h_new, c_new = lstm_cell(
        x, h, c, w["weight"], w["bias"], w["head_weight"], w["head_bias"]
    )
    direction = adam * torch.exp(config.log_scale_bound * torch.tanh(y[0]))
    direction = direction + config.direction_bound * torch.tanh(y[1])
    return RuleOutput(direction, m, v, h_new, c_new)


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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> None:
    """Apply the learned rule in place to every tensor of the lists (see the module docstring).

    ``params`` must share a device. ``exp_avgs``, ``exp_avg_sqs`` have the shape of their
    parameter, ``lstm_hs``/``lstm_cs`` shape ``[H, *p.shape]``. State is normally in the compute
    dtype (fp64 for fp64 params, else fp32); any other floating dtype (e.g. bf16 LSTM state) is
    read and written with one rounding, the maths staying in the compute dtype. ``state_steps``
    are scalar float tensors, incremented here. Runs without autograd.
    """
    if not params:
        return
    if impl not in IMPLS and impl not in LEGACY_IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    lists = (grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps)
    if any(len(lst) != len(params) for lst in lists):
        raise ValueError(
            "learned_update needs one entry per parameter in every list: got lengths "
            f"params={len(params)}, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps="
            f"{[len(lst) for lst in lists]}"
        )
    device = params[0].device
    fused = kernels.FUSED_BACKENDS.get(device.type)
    if impl in LEGACY_IMPLS:
        warnings.warn(f"learned_update: impl={impl!r} is deprecated, use impl={LEGACY_IMPLS[impl]!r} "
                      f"(see the learned_optim.update docstring)", FutureWarning, stacklevel=2)
        if impl == "torch":  # the chunk loop, with the C loop for what it covers on CPU; never Triton
            impl = "auto" if device.type == "cpu" else "eager"
        else:
            impl, fused = "fused", kernels.triton
    if impl != "reference" and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}; the default is {DEFAULT_CHUNK_SIZE}")
    kw = dict(weights=weights, config=config, lr=lr, weight_decay=weight_decay, maximize=maximize)
    with torch.no_grad():
        torch._foreach_add_(list(state_steps), 1)
        if impl == "reference":
            _reference_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, **kw)
            return
        cdt = compute_dtype(params[0].dtype)
        if any(compute_dtype(p.dtype) != cdt for p in params):
            raise ValueError(
                f"learned_update(impl={impl!r}) needs parameters of one compute dtype per call: "
                "call it separately for fp64 and for fp32/bf16/fp16 parameters"
            )
        rule = prepare_rule(weights, config, device=device, dtype=cdt, lr=lr, weight_decay=weight_decay,
                            maximize=maximize)
        batch = prepare_batch(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, config=config)
        todo = [i for i, n in enumerate(batch.numels) if n > 0]
        if impl != "eager" and todo:
            done = fused.select(rule, batch, todo) if fused is not None else []
            if impl == "fused" and len(done) < len(todo):
                why = "no fused kernel exists for this device" if fused is None else (
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


def finite_flags(grads: Sequence[Tensor]) -> Tensor:
    """Bool tensor, one entry per gradient: True where it has no NaN or inf.

    A drop-in for the ``torch._foreach_norm(grads, inf)`` test in
    ``LearnedOptimizer._drop_nonfinite``, which measured 2.6 ms for 1e6 fp32 coordinates on one
    core of the benchmark machine against 0.12 ms for the L2 norm used here (the inf-norm takes a
    slow path in torch 2.13 on CPU). A gradient with a NaN or inf has a non-finite L2 norm; a
    finite one has a finite norm unless its sum of squares overflows, so every non-finite norm
    is re-checked exactly with ``isfinite`` (only for those tensors: normally none).
    """
    norms = torch._foreach_norm(list(grads), 2)
    ok = torch.isfinite(torch.stack([n.float() for n in norms]))
    if not bool(ok.all()):
        for i in (~ok).nonzero().flatten().tolist():
            ok[i] = bool(torch.isfinite(grads[i]).all())
    return ok


def _reference_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, *,
                      weights, config, lr, weight_decay, maximize) -> None:
    w = weights_dict(weights)
    hs = config.hidden_size
    decay = 1 - lr * weight_decay
    for p, g, m, v, h, c, step in zip(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps):
        cdt = compute_dtype(p.dtype)
        wc = {k: t.detach().to(cdt) for k, t in w.items()}
        g = g.reshape(-1).to(cdt)
        if maximize:
            g = -g
        out = lstm_rule(g, m.reshape(-1).to(cdt), v.reshape(-1).to(cdt), h.reshape(hs, -1).to(cdt),
                        c.reshape(hs, -1).to(cdt), step.item(), wc, config)
        m.copy_(out.exp_avg.view_as(m))
        v.copy_(out.exp_avg_sq.view_as(v))
        h.copy_(out.h.view_as(h))
        c.copy_(out.c.view_as(c))
        # Decoupled weight decay and the step in the compute dtype, one rounding to p's dtype.
        p.copy_((p.to(cdt) * decay - lr * out.direction.view_as(p)).to(p.dtype))
