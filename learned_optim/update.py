r"""The functional update: features -> coordinatewise LSTM -> step.

Two layers, like torch/optim/adam.py:

* ``lstm_rule`` is the maths, a pure differentiable function of one flat tensor's gradient and
  state. Meta-training backpropagates through it; every fast path is tested against it.
* ``learned_update`` applies the rule in place to lists of parameters and their state, with one
  signature for every implementation path (``impl``):

  - ``"reference"``: ``lstm_rule`` per parameter tensor. Slow, obviously correct.
  - ``"torch"``: all coordinates of all tensors in one batched pass, walked in cache-sized
    chunks with feature-major, preallocated buffers (the CPU fast path).
  - ``"triton"``: a fused Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``), when
    ``learned_optim.kernels`` provides one.
  - ``"auto"``: ``"triton"`` for CUDA tensors when Triton is importable, else ``"torch"``.

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

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from .network import LSTMOptimizerConfig, lstm_cell

__all__ = ["RuleOutput", "lstm_rule", "learned_update", "IMPLS", "DEFAULT_CHUNK_SIZE"]

IMPLS = ("auto", "reference", "torch", "triton")

# Coordinates per chunk on the CPU path. The chunk's buffers take about
# (F + H + 4H + H + 8) * 4 bytes per coordinate (~140 B for H=4): 8192 coordinates is ~1.1 MiB,
# inside the 2 MiB per-core L2 of the machine the benchmarks run on (`lscpu`).
DEFAULT_CHUNK_SIZE = 8192


class RuleOutput(NamedTuple):
    direction: Tensor  # [N] the unit-scale step u_t (the update is p -= lr * u_t)
    exp_avg: Tensor  # [N] m_t
    exp_avg_sq: Tensor  # [N] v_t
    h: Tensor  # [H, N]
    c: Tensor  # [H, N]


def _weights_dict(weights) -> Mapping[str, Tensor]:
    if isinstance(weights, Mapping):
        return weights
    return {
        "weight": weights.weight,
        "bias": weights.bias,
        "head_weight": weights.head_weight,
        "head_bias": weights.head_bias,
    }


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
    w = _weights_dict(weights)
    b1, b2 = config.beta1, config.beta2
    m = exp_avg * b1 + grad * (1 - b1)
    v = exp_avg_sq * b2 + grad * grad * (1 - b2)
    bc1 = 1 - b1**step
    bc2 = 1 - b2**step
    denom = torch.sqrt(v / bc2) + config.eps
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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp64 parameters keep fp64 maths (that is how fast paths are checked against the
    # reference); everything else (fp32, bf16, fp16) computes in fp32.
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    parameter, ``lstm_hs``/``lstm_cs`` shape ``[H, *p.shape]``, all in the compute dtype (fp64
    for fp64 params, else fp32). ``state_steps`` are scalar float tensors, incremented here.
    Runs without autograd.
    """
    if not params:
        return
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "torch"
        if params[0].is_cuda:
            from . import kernels

            if kernels.triton_available():
                impl = "triton"
    with torch.no_grad():
        for s in state_steps:
            s += 1
        if weight_decay != 0:
            torch._foreach_mul_(list(params), 1 - lr * weight_decay)
        if impl == "reference":
            _reference_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps,
                              weights=weights, config=config, lr=lr, maximize=maximize)
        elif impl == "torch":
            _batched_torch_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps,
                                  weights=weights, config=config, lr=lr, maximize=maximize,
                                  chunk_size=chunk_size)
        else:
            from . import kernels

            kernels.triton_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps,
                                  weights=weights, config=config, lr=lr, maximize=maximize)


def _reference_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, *,
                      weights, config, lr, maximize) -> None:
    w = _weights_dict(weights)
    hs = config.hidden_size
    for p, g, m, v, h, c, step in zip(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps):
        cdt = _compute_dtype(p.dtype)
        wc = {k: t.detach().to(cdt) for k, t in w.items()}
        g = g.reshape(-1).to(cdt)
        if maximize:
            g = -g
        out = lstm_rule(g, m.reshape(-1), v.reshape(-1), h.reshape(hs, -1), c.reshape(hs, -1),
                        step.item(), wc, config)
        m.copy_(out.exp_avg.view_as(m))
        v.copy_(out.exp_avg_sq.view_as(v))
        h.copy_(out.h.view_as(h))
        c.copy_(out.c.view_as(c))
        p.copy_((p.to(cdt) - lr * out.direction.view_as(p)).to(p.dtype))


@dataclass
class _Buffers:
    """Preallocated per-chunk work space, reused across chunks and steps (feature-major)."""

    z: Tensor  # [(F+H) * K] LSTM input [x; h]
    gates: Tensor  # [4H * K]
    c: Tensor  # [H * K]
    t: Tensor  # [H * K] tanh(c') then h'
    y: Tensor  # [2 * K] head output
    g: Tensor  # [K] gradient
    m: Tensor  # [K] m_t
    v: Tensor  # [K] v_t
    d: Tensor  # [K] denominator sqrt(v_hat) + eps
    a: Tensor  # [K] Adam direction, then the step u_t


_BUFFER_CACHE: dict[tuple, _Buffers] = {}


def _buffers(device: torch.device, dtype: torch.dtype, f: int, hs: int, k: int) -> _Buffers:
    key = (device, dtype, f, hs, k)
    buf = _BUFFER_CACHE.get(key)
    if buf is None:
        def e(n):
            return torch.empty(n * k, device=device, dtype=dtype)

        buf = _Buffers(z=e(f + hs), gates=e(4 * hs), c=e(hs), t=e(hs), y=e(2), g=e(1), m=e(1),
                       v=e(1), d=e(1), a=e(1))
        if len(_BUFFER_CACHE) > 16:  # bounded: one entry per (device, dtype, shape) in use
            _BUFFER_CACHE.clear()
        _BUFFER_CACHE[key] = buf
    return buf


def _chunk_plan(numels: Sequence[int], chunk_size: int) -> list[list[tuple[int, int, int]]]:
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


def _gather(pieces: list[Tensor], out: Tensor) -> Tensor:
    if len(pieces) == 1:
        out.copy_(pieces[0])
    else:
        torch.cat(pieces, dim=-1, out=out)
    return out


def _batched_torch_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, *,
                          weights, config, lr, maximize, chunk_size) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    w = _weights_dict(weights)
    hs, nf = config.hidden_size, config.num_features
    b1, b2, eps, clip = config.beta1, config.beta2, config.eps, config.feature_clip
    device = params[0].device
    cdt = _compute_dtype(params[0].dtype)
    if any(_compute_dtype(p.dtype) != cdt for p in params):
        raise ValueError("learned_update(impl='torch') needs parameters of one compute dtype per call")

    # Weights, prepared once per step: tanh(x) = 2*sigmoid(2x) - 1 is exact and sigmoid is
    # ~5x faster than tanh on this CPU (NOTES-anchors.md), so the g-gate rows and the head
    # are pre-scaled by 2 and every nonlinearity below is one in-place sigmoid.
    weight = w["weight"].detach().to(device, cdt).clone()
    bias = w["bias"].detach().to(device, cdt).clone()
    weight[2 * hs : 3 * hs] *= 2
    bias[2 * hs : 3 * hs] *= 2
    head_w = w["head_weight"].detach().to(device, cdt) * 2
    head_b = (w["head_bias"].detach().to(device, cdt) * 2)[:, None]
    bias = bias[:, None]
    feat_rows = {name: r for r, name in enumerate(config.features)}

    # Moments for all tensors at once (torch's foreach kernels), in place in the state.
    g_flat = [g.reshape(-1) for g in grads]
    if maximize:
        g_flat = torch._foreach_neg(g_flat)
    if any(g.dtype != cdt for g in g_flat):
        g_flat = [g.to(cdt) for g in g_flat]
    m_flat = [m.view(-1) for m in exp_avgs]
    v_flat = [v.view(-1) for v in exp_avg_sqs]
    torch._foreach_lerp_(m_flat, g_flat, 1 - b1)
    torch._foreach_mul_(v_flat, b2)
    torch._foreach_addcmul_(v_flat, g_flat, g_flat, 1 - b2)
    h_flat = [h.view(hs, -1) for h in lstm_hs]
    c_flat = [c.view(hs, -1) for c in lstm_cs]
    p_flat = [p.view(-1) if p.is_contiguous() else None for p in params]

    # Bias corrections per tensor; usually every tensor of a group is at the same step.
    steps = [float(s) for s in state_steps]
    inv_bc1 = [1.0 / (1 - b1**t) for t in steps]
    inv_bc2 = [1.0 / (1 - b2**t) for t in steps]

    numels = [g.numel() for g in g_flat]
    buf = _buffers(device, cdt, nf, hs, min(chunk_size, sum(numels)))
    for chunk in _chunk_plan(numels, chunk_size):
        k = sum(e - s for _, s, e in chunk)
        z = buf.z[: (nf + hs) * k].view(nf + hs, k)
        gates = buf.gates[: 4 * hs * k].view(4 * hs, k)
        cc = buf.c[: hs * k].view(hs, k)
        tt = buf.t[: hs * k].view(hs, k)
        y = buf.y[: 2 * k].view(2, k)
        g, m, v, d, a = buf.g[:k], buf.m[:k], buf.v[:k], buf.d[:k], buf.a[:k]

        _gather([g_flat[i][s:e] for i, s, e in chunk], g)
        _gather([m_flat[i][s:e] for i, s, e in chunk], m)
        _gather([v_flat[i][s:e] for i, s, e in chunk], v)
        _gather([h_flat[i][:, s:e] for i, s, e in chunk], z[nf:])
        _gather([c_flat[i][:, s:e] for i, s, e in chunk], cc)
        idx = [i for i, _, _ in chunk]
        if len({steps[i] for i in idx}) == 1:
            ib1, ib2 = inv_bc1[idx[0]], inv_bc2[idx[0]]
        else:  # tensors at different steps share this chunk: per-coordinate corrections
            lens = torch.tensor([e - s for _, s, e in chunk], device=device)
            ib1 = torch.tensor([inv_bc1[i] for i in idx], device=device, dtype=cdt).repeat_interleave(lens)
            ib2 = torch.tensor([inv_bc2[i] for i in idx], device=device, dtype=cdt).repeat_interleave(lens)

        torch.mul(v, ib2, out=d)
        d.sqrt_().add_(eps)
        torch.mul(m, ib1, out=a)
        a.div_(d)  # the Adam direction
        if "g_norm" in feat_rows:
            torch.div(g, d, out=z[feat_rows["g_norm"]])
        if "m_norm" in feat_rows:
            z[feat_rows["m_norm"]].copy_(a)
        z[:nf].clamp_(-clip, clip)

        torch.addmm(bias, weight, z, out=gates)
        gates.sigmoid_()
        gi, gf, gg, go = gates[0:hs], gates[hs : 2 * hs], gates[2 * hs : 3 * hs], gates[3 * hs :]
        gg.mul_(2).sub_(1)  # tanh of the cell input
        cc.mul_(gf).addcmul_(gi, gg)  # c' = f * c + i * tanh(.)
        torch.mul(cc, 2, out=tt)
        tt.sigmoid_().mul_(2).sub_(1).mul_(go)  # h' = o * tanh(c')
        torch.addmm(head_b, head_w, tt, out=y)
        y.sigmoid_().mul_(2).sub_(1)  # tanh of the head outputs
        y0, y1 = y[0], y[1]
        y0.mul_(config.log_scale_bound).exp_()
        a.mul_(y0).add_(y1, alpha=config.direction_bound)  # u_t

        # Scatter: new LSTM state and the parameter step, one foreach call each.
        off, h_dst, c_dst, h_src, c_src, p_dst, u_src, slow = 0, [], [], [], [], [], [], []
        for i, s, e in chunk:
            n = e - s
            h_dst.append(h_flat[i][:, s:e])
            c_dst.append(c_flat[i][:, s:e])
            h_src.append(tt[:, off : off + n])
            c_src.append(cc[:, off : off + n])
            if p_flat[i] is None:
                slow.append((i, s, e, off))
            else:
                p_dst.append(p_flat[i][s:e])
                u_src.append(a[off : off + n])
            off += n
        torch._foreach_copy_(h_dst, h_src)
        torch._foreach_copy_(c_dst, c_src)
        if p_dst:
            if all(p.dtype == cdt for p in p_dst):
                torch._foreach_add_(p_dst, u_src, alpha=-lr)
            else:  # low-precision params: fp32 maths, one rounding to the param's dtype
                for p, u in zip(p_dst, u_src):
                    p.copy_(p.to(cdt).add_(u, alpha=-lr))
        for i, s, e, o in slow:  # non-contiguous parameter: update a flat copy, write it back
            p = params[i]
            flat = p.reshape(-1).to(cdt)
            flat[s:e].add_(a[o : o + e - s], alpha=-lr)
            p.copy_(flat.view_as(p))
