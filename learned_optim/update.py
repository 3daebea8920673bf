r"""The functional update: features -> coordinatewise LSTM -> step.

Two layers, like torch/optim/adam.py:

* ``lstm_rule`` is the maths, a pure differentiable function of one flat tensor's gradient and
  state. Meta-training backpropagates through it; every fast path is tested against it.
* ``learned_update`` applies the rule in place to lists of parameters and their state, with one
  signature for every implementation path (``impl``):

  - ``"reference"``: ``lstm_rule`` per parameter tensor. Slow, obviously correct.
  - ``"torch"``: all coordinates of all tensors in one batched pass (the CPU fast path). On CPU,
    fp32/fp64 tensors (and bf16 LSTM state) go through one fused C loop, one pass per coordinate
    with everything in registers (``learned_optim.kernels.cpu``: compiled with gcc at first use,
    hand-vectorized for fp32 on AVX-512 or AVX2 CPUs; ``LEARNED_OPTIM_C_KERNEL=0`` or a missing
    compiler fall back to the next form). Everything else runs an eager loop over
    cache-sized chunks: large tensors in place through strided views, small ones packed
    together, feature-major preallocated buffers, ~30 torch ops per chunk.
  - ``"triton"``: the fused multi-tensor Triton kernel (``learned_optim.kernels``): one launch
    per group over a table of pointers (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).
  - ``"auto"``: ``"triton"`` for CUDA tensors when Triton is importable, else ``"torch"``.

Measured on the 2-core AMD EPYC the benchmarks run on, one thread, 1e6 parameters, default
config: eager chunk loop ~37 ms per step, portable C loop ~14.4 ms, AVX-512 C loop ~8.4 ms
(``benchmarks/profile_step.py``, ``benchmarks/speed.py``).

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

import os
import threading
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from .network import LSTMOptimizerConfig, lstm_cell

__all__ = ["RuleOutput", "lstm_rule", "learned_update", "finite_flags", "IMPLS", "DEFAULT_CHUNK_SIZE"]

IMPLS = ("auto", "reference", "torch", "triton")

# Coordinates per chunk of the eager loop. The chunk's work space is about 42 floats per
# coordinate for H=4 (~1.3 MiB at 8192), of which one op touches a few MiB-fractions at a time;
# `lscpu` here: 1 MiB L2 per core, 32 MiB shared L3. Measured at 1e6 parameters, one thread
# (benchmarks/profile_step.py, noisy shared machine): 4096: 48 ms, 8192: 35 ms, 16384: 30 ms,
# 32768: 27 ms -- larger chunks amortise the ~30 op dispatches per chunk better than they lose
# in cache. Kept at 8192 (documented in LearnedOptimizer) since the eager loop now only runs for
# what the C loop does not cover (bf16/fp16 parameters, CUDA without Triton, no compiler).
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
    parameter, ``lstm_hs``/``lstm_cs`` shape ``[H, *p.shape]``. State is normally in the compute
    dtype (fp64 for fp64 params, else fp32); any other floating dtype (e.g. bf16 LSTM state) is
    read and written with one rounding, the maths staying in the compute dtype. ``state_steps``
    are scalar float tensors, incremented here. Runs without autograd.
    """
    if not params:
        return
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    lists = (grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps)
    if any(len(lst) != len(params) for lst in lists):
        raise ValueError(
            "learned_update needs one entry per parameter in every list: got lengths "
            f"params={len(params)}, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps="
            f"{[len(lst) for lst in lists]}"
        )
    if impl == "auto":
        impl = "torch"
        if params[0].is_cuda:
            from . import kernels

            if kernels.triton_available(params[0].device):
                impl = "triton"
    kw = dict(weights=weights, config=config, lr=lr, weight_decay=weight_decay, maximize=maximize)
    with torch.no_grad():
        torch._foreach_add_(list(state_steps), 1)
        if impl == "reference":
            _reference_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, **kw)
        elif impl == "torch":
            _batched_torch_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps,
                                  chunk_size=chunk_size, **kw)
        else:
            from . import kernels

            kernels.triton_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, **kw)


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
    w = _weights_dict(weights)
    hs = config.hidden_size
    decay = 1 - lr * weight_decay
    for p, g, m, v, h, c, step in zip(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps):
        cdt = _compute_dtype(p.dtype)
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


# ----------------------------------------------------------------------------------------------
# The batched torch path.
#
# Tensors of at least chunk_size/2 coordinates are processed *in place*: each chunk is a set of
# views into the tensor and its state (g, m, v, p slices, and [H, k] row-strided views of h and
# c), so nothing is gathered or scattered. Smaller tensors are packed together into chunks
# (copied into the chunk buffers and back), which is cheaper than paying the ~30 op dispatches of
# a chunk per tiny tensor. The chunk work space is preallocated and reused across steps.
# ----------------------------------------------------------------------------------------------


@dataclass
class _Buffers:
    """Per-chunk work space, feature-major, ``k`` = chunk size."""

    z: Tensor  # [(F+H) * k] LSTM input [x; h]
    gates: Tensor  # [4H * k]
    t: Tensor  # [H * k] sigmoid(-2 c'), then h' when h is staged
    y: Tensor  # [2 * k] head output
    d: Tensor  # [k] denominator sqrt(v_hat) + eps
    a: Tensor  # [k] Adam direction, then the step u_t
    g: Tensor  # [k] staged gradient (maximize / other dtype / packed)
    m: Tensor  # [k] staged m (other dtype / packed)
    v: Tensor  # [k] staged v
    p: Tensor  # [k] staged low-precision parameter
    h: Tensor  # [H * k] packed h
    c: Tensor  # [H * k] staged / packed c


# One cache per thread: two optimizers stepping in two threads must not share work space.
_BUFFER_CACHE = threading.local()


def _buffers(device: torch.device, dtype: torch.dtype, f: int, hs: int, k: int) -> _Buffers:
    cache = getattr(_BUFFER_CACHE, "d", None)
    if cache is None:
        cache = _BUFFER_CACHE.d = {}
    key = (device, dtype, f, hs)
    buf = cache.get(key)
    if buf is None or buf.d.numel() < k:
        def e(n):
            return torch.empty(n * k, device=device, dtype=dtype)

        buf = _Buffers(z=e(f + hs), gates=e(4 * hs), t=e(hs), y=e(2), d=e(1), a=e(1), g=e(1), m=e(1),
                       v=e(1), p=e(1), h=e(hs), c=e(hs))
        if len(cache) > 8:  # bounded: one entry per (device, dtype, architecture) in use
            cache.clear()
        cache[key] = buf
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


class _Rule(NamedTuple):
    """The rule's constants and weights, prepared once per step for the chunk loop."""

    config: LSTMOptimizerConfig
    cdt: torch.dtype
    weight: Tensor  # [4H, F+H], g-gate rows x2
    bias: Tensor  # [4H, 1], g-gate rows x2
    head_w: Tensor  # [2, H] x2
    head_b: Tensor  # [2, 1] x2
    feat_rows: tuple[tuple[int, str], ...]
    lr: float
    decay: float  # 1 - lr * weight_decay
    maximize: bool


def _prepare_rule(weights, config, device, cdt, lr, weight_decay, maximize) -> _Rule:
    # tanh(x) = 2 sigmoid(2x) - 1 is exact, and sigmoid is ~5x faster than tanh on the CPU we
    # measured (NOTES-anchors.md), so the g-gate rows and the head are pre-scaled by 2 and every
    # nonlinearity below is one in-place sigmoid.
    w = _weights_dict(weights)
    hs = config.hidden_size
    weight = w["weight"].detach().to(device, cdt, copy=True)
    bias = w["bias"].detach().to(device, cdt, copy=True)
    weight[2 * hs : 3 * hs] *= 2
    bias[2 * hs : 3 * hs] *= 2
    head_w = w["head_weight"].detach().to(device, cdt) * 2
    head_b = (w["head_bias"].detach().to(device, cdt) * 2)[:, None]
    return _Rule(config, cdt, weight, bias[:, None], head_w, head_b,
                 tuple(enumerate(config.features)), float(lr), 1.0 - lr * weight_decay, bool(maximize))


def _chunk_step(rule: _Rule, buf: _Buffers, g, m, v, h, c, p, ib1, sib2) -> Tensor:
    """The rule on one chunk of k coordinates, in place: m, v [k]; h, c [H, k] (row-strided views
    are fine); p [k] or None. ``ib1`` = 1/(1-b1^t) and ``sib2`` = sqrt(1/(1-b2^t)) are floats or
    [k] tensors. Returns the step u_t [k] (a view of ``buf.a``, valid until the next chunk)."""
    cfg, cdt = rule.config, rule.cdt
    hs, nf, k = cfg.hidden_size, cfg.num_features, g.shape[0]
    z = buf.z[: (nf + hs) * k].view(nf + hs, k)
    x = z[:nf]
    gates = buf.gates[: 4 * hs * k].view(4 * hs, k)
    t = buf.t[: hs * k].view(hs, k)
    y = buf.y[: 2 * k].view(2, k)
    d, a = buf.d[:k], buf.a[:k]

    # Stage anything not already a compute-dtype view (other dtypes round once on the way back).
    if rule.maximize or g.dtype != cdt:
        buf.g[:k].copy_(g)
        g = buf.g[:k]
        if rule.maximize:
            g.neg_()
    m_dst = v_dst = c_dst = None
    if m.dtype != cdt:
        m_dst, m = m, buf.m[:k].copy_(m)
    if v.dtype != cdt:
        v_dst, v = v, buf.v[:k].copy_(v)
    if c.dtype != cdt:
        c_dst, c = c, buf.c[: hs * k].view(hs, k).copy_(c)
    z[nf:].copy_(h)  # h_{t-1} into the LSTM input (before h is overwritten below)
    h_out = h if h.dtype == cdt else t

    b1, b2 = cfg.beta1, cfg.beta2
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    torch.sqrt(v, out=d)
    d.mul_(sib2).add_(cfg.eps)  # sqrt(v_hat) + eps
    torch.div(m, d, out=a)
    a.mul_(ib1)  # the Adam direction
    for row, name in rule.feat_rows:
        if name == "g_norm":
            torch.div(g, d, out=x[row])
        else:  # "m_norm"
            x[row].copy_(a)
    x.clamp_(-cfg.feature_clip, cfg.feature_clip)

    torch.addmm(rule.bias, rule.weight, z, out=gates)
    gates.sigmoid_()
    gi, gf, gg, go = gates[0:hs], gates[hs : 2 * hs], gates[2 * hs : 3 * hs], gates[3 * hs :]
    c.mul_(gf).addcmul_(gi, gg, value=2).sub_(gi)  # c' = f c + i (2 sigmoid(2.) - 1)
    torch.mul(c, -2, out=t)
    t.sigmoid_()  # sigmoid(-2c'), so tanh(c') = 1 - 2t
    torch.addcmul(go, go, t, value=-2, out=h_out)  # h' = o tanh(c')
    torch.addmm(rule.head_b, rule.head_w, h_out, out=y)
    y.sigmoid_()  # tanh(y) = 2 y - 1
    y0, y1 = y[0], y[1]
    s, r = cfg.log_scale_bound, cfg.direction_bound
    y0.mul_(2 * s).sub_(s).exp_()  # exp(s tanh y_0)
    a.mul_(y0).add_(y1, alpha=2 * r).sub_(r)  # u = a exp(s tanh y_0) + r tanh y_1

    if p is not None:
        if p.dtype == cdt:
            if rule.decay != 1.0:
                p.mul_(rule.decay)
            p.add_(a, alpha=-rule.lr)
        else:  # fp32 maths, one rounding to the parameter's dtype
            pw = buf.p[:k].copy_(p)
            if rule.decay != 1.0:
                pw.mul_(rule.decay)
            p.copy_(pw.add_(a, alpha=-rule.lr))
    for dst, src in ((m_dst, m), (v_dst, v), (c_dst, c)):
        if dst is not None:
            dst.copy_(src)
    if h_out is not h:
        h.copy_(h_out)
    return a


def _batched_torch_update(params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, state_steps, *,
                          weights, config, lr, weight_decay, maximize, chunk_size) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}; the default is {DEFAULT_CHUNK_SIZE}")
    hs, nf = config.hidden_size, config.num_features
    b1, b2 = config.beta1, config.beta2
    device = params[0].device
    cdt = _compute_dtype(params[0].dtype)
    if any(_compute_dtype(p.dtype) != cdt for p in params):
        raise ValueError(
            "learned_update(impl='torch') needs parameters of one compute dtype per call: "
            "call it separately for fp64 and for fp32/bf16/fp16 parameters"
        )
    rule = _prepare_rule(weights, config, device, cdt, lr, weight_decay, maximize)

    # Flat views of every tensor; a non-contiguous one is updated through a contiguous copy that
    # is written back at the end (memory proportional to that tensor only; rare in practice).
    writebacks: list[tuple[Tensor, Tensor]] = []

    def flat(t: Tensor, rows: int | None) -> Tensor:
        shape = (-1,) if rows is None else (rows, -1)
        if t.is_contiguous():
            return t.view(shape)
        tmp = t.contiguous()
        writebacks.append((t, tmp))
        return tmp.view(shape)

    p_f = [flat(p, None) for p in params]
    m_f = [flat(t, None) for t in exp_avgs]
    v_f = [flat(t, None) for t in exp_avg_sqs]
    h_f = [flat(t, hs) for t in lstm_hs]
    c_f = [flat(t, hs) for t in lstm_cs]
    g_f = [g.reshape(-1) for g in grads]  # read only

    steps = [float(s) for s in state_steps]
    ib1 = [1.0 / (1 - b1**t) for t in steps]
    sib2 = [(1.0 / (1 - b2**t)) ** 0.5 for t in steps]

    numels = [p.numel() for p in params]
    todo = [i for i, n in enumerate(numels) if n > 0]
    if device.type == "cpu" and os.environ.get("LEARNED_OPTIM_C_KERNEL", "1") != "0":
        from .kernels import cpu as cpu_kernel

        fused = [i for i in todo if cpu_kernel.supports(p_f[i], g_f[i], m_f[i], v_f[i], h_f[i], c_f[i], hs)]
        if fused and cpu_kernel.available(hs, rule.config.num_features):
            cpu_kernel.run(*([lst[i] for i in fused] for lst in (p_f, g_f, m_f, v_f, h_f, c_f)),
                           [ib1[i] for i in fused], [sib2[i] for i in fused], rule=rule, cdt=cdt)
            done = set(fused)
            todo = [i for i in todo if i not in done]

    if todo:
        _chunked_torch(rule, todo, numels, p_f, g_f, m_f, v_f, h_f, c_f, ib1, sib2, device, chunk_size)
    for dst, src in writebacks:
        dst.copy_(src.view_as(dst))


def _chunked_torch(rule, todo, numels, p_f, g_f, m_f, v_f, h_f, c_f, ib1, sib2, device, chunk_size) -> None:
    """The eager chunk loop over the tensors ``todo`` (indices into the flat lists)."""
    hs, nf, cdt = rule.config.hidden_size, rule.config.num_features, rule.cdt
    buf = _buffers(device, cdt, nf, hs, min(chunk_size, sum(numels[i] for i in todo)))
    inplace_min = max(1, chunk_size // 2)
    small = [i for i in todo if numels[i] < inplace_min]

    for i in todo:
        n = numels[i]
        if n < inplace_min:
            continue
        # Equal pieces of at most chunk_size (not chunk_size + a tiny tail).
        pieces = -(-n // chunk_size)
        step = -(-n // pieces)
        for s in range(0, n, step):
            e = min(n, s + step)
            _chunk_step(rule, buf, g_f[i][s:e], m_f[i][s:e], v_f[i][s:e], h_f[i][:, s:e], c_f[i][:, s:e],
                        p_f[i][s:e], ib1[i], sib2[i])

    for chunk in _chunk_plan([numels[i] for i in small], chunk_size):
        segs = [(small[j], s, e) for j, s, e in chunk]
        _packed_chunk(rule, buf, segs, p_f, g_f, m_f, v_f, h_f, c_f, ib1, sib2, device)


def _packed_chunk(rule, buf, segs, p_f, g_f, m_f, v_f, h_f, c_f, ib1, sib2, device) -> None:
    """Small tensors: gather their segments into the chunk buffers, step, scatter back."""
    cdt, hs = rule.cdt, rule.config.hidden_size
    k = sum(e - s for _, s, e in segs)
    g, m, v = buf.g[:k], buf.m[:k], buf.v[:k]
    h, c = buf.h[: hs * k].view(hs, k), buf.c[: hs * k].view(hs, k)
    for src, out in ((g_f, g), (m_f, m), (v_f, v)):
        torch.cat([src[i][s:e].to(cdt) for i, s, e in segs], out=out)
    for src, out in ((h_f, h), (c_f, c)):
        torch.cat([src[i][:, s:e].to(cdt) for i, s, e in segs], dim=1, out=out)
    idx = [i for i, _, _ in segs]
    if len({ib1[i] for i in idx}) == 1:
        cb1, cb2 = ib1[idx[0]], sib2[idx[0]]
    else:  # tensors at different steps share this chunk: per-coordinate corrections
        lens = torch.tensor([e - s for _, s, e in segs], device=device)
        cb1 = torch.tensor([ib1[i] for i in idx], device=device, dtype=cdt).repeat_interleave(lens)
        cb2 = torch.tensor([sib2[i] for i in idx], device=device, dtype=cdt).repeat_interleave(lens)
    u = _chunk_step(rule, buf, g, m, v, h, c, None, cb1, cb2)

    offs, off = [], 0
    for _, s, e in segs:
        offs.append((off, off + e - s))
        off += e - s
    for dsts, src in ((m_f, m), (v_f, v)):
        torch._foreach_copy_([dsts[i][s:e] for i, s, e in segs], [src[a:b] for a, b in offs])
    for dsts, src in ((h_f, h), (c_f, c)):
        torch._foreach_copy_([dsts[i][:, s:e] for i, s, e in segs], [src[:, a:b] for a, b in offs])
    p_dst = [p_f[i][s:e] for i, s, e in segs]
    u_src = [u[a:b] for a, b in offs]
    if all(p.dtype == cdt for p in p_dst):
        if rule.decay != 1.0:
            torch._foreach_mul_(p_dst, rule.decay)
        torch._foreach_add_(p_dst, u_src, alpha=-rule.lr)
    else:  # low-precision params: fp32 maths, one rounding to the param's dtype
        for p, uu in zip(p_dst, u_src):
            p.copy_(p.to(cdt).mul_(rule.decay).add_(uu, alpha=-rule.lr))
