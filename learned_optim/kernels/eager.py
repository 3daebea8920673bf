"""The eager backend: the rule as ~30 torch ops per cache-sized chunk, on any device and dtype.

Tensors of at least chunk_size/2 coordinates are processed *in place*: each chunk is a set of
views into the tensor and its state (g, m, v, p slices, and [H, k] row-strided views of h and
c), so nothing is gathered or scattered. Smaller tensors are packed together into chunks
(copied into the chunk buffers and back), which is cheaper than paying the ~30 op dispatches of
a chunk per tiny tensor. The chunk work space is preallocated, feature-major, and reused across
steps.

This backend's own transform of the prepared rule: tanh(x) = 2 sigmoid(2x) - 1 is exact, and
sigmoid is ~5x faster than tanh on the CPU we measured, so the g-gate rows and the head are
scaled by 2 on entry and every nonlinearity below is one in-place sigmoid.

``learned_update(impl="eager")`` runs only this; ``impl="auto"`` runs it for what the fused
backend of the device does not cover (on CPU: bf16/fp16 parameters, or no C compiler).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .rule import Batch, PreparedRule, chunk_plan

__all__ = ["DEFAULT_CHUNK_SIZE", "GPU_CHUNK_SIZE", "default_chunk_size", "update", "buffers", "count_agree",
           "count_agree_lists"]

# Coordinates per chunk. The chunk's work space is about 42 floats per coordinate for H=4
# (~1.3 MiB at 8192), of which one op touches a few MiB-fractions at a time; `lscpu` here: 1 MiB
# L2 per core, 32 MiB shared L3. Measured at 1e6 parameters, one thread
# (benchmarks/profile_step.py, noisy shared machine): 4096: 48 ms, 8192: 35 ms, 16384: 30 ms,
# 32768: 27 ms -- larger chunks amortise the ~30 op dispatches per chunk better than they lose
# in cache. Kept at 8192 (documented in LearnedOptimizer) since this loop only runs for what the
# fused loops do not cover on CPU (bf16/fp16 parameters, no compiler).
DEFAULT_CHUNK_SIZE = 8192
# Coordinates per chunk on any other device (CUDA without Triton). Each chunk costs ~30 kernel
# launches, so there the chunk count, not the cache, sets the time: the shipped default's step at
# 1e8 parameters on an H200 took 4.6 s at 2^13, 0.67 s at 2^16, 0.16 s at 2^18, 42 ms at 2^20 and
# 57 ms at 2^22 (benchmarks/results/gpu-h200/README.md; 76 ms at 2^20 on another machine: ~3000
# launches a step keep it bound by the host). The work space at 2^20 is ~170 MiB, and never more
# than 42 floats per coordinate of the tensors the loop updates.
GPU_CHUNK_SIZE = 2**20


# The cautious rescale's count holds two temporaries the size of the tensors it counts at once:
# it takes the tensors in groups of at most this many values (a larger tensor alone).
COUNT_GROUP = 2**24


def count_agree_lists(grads: Sequence[Tensor], exp_avgs: Sequence[Tensor], beta1: float, maximize: bool,
                      dtype: torch.dtype | None = None) -> Tensor:
    """Per tensor, the number of coordinates the cautious mask keeps at this step: where m_t =
    lerp(m, g, 1 - beta1) (``exp_avgs`` before the step) and g (negated when ``maximize``) are
    both non-zero with the same sign. ``[T]`` fp64 on the tensors' device, in foreach ops in
    ``dtype`` (default ``None``: each gradient's own); any device."""
    counts = []
    todo = [(g, m) for g, m in zip(grads, exp_avgs)]
    start = 0
    while start < len(todo):
        stop, size = start, 0
        while stop < len(todo) and (stop == start or size + todo[stop][0].numel() <= COUNT_GROUP):
            size += todo[stop][0].numel()
            stop += 1
        gs = [g.reshape(-1).to(dtype or g.dtype) for g, _ in todo[start:stop]]
        ms = [m.reshape(-1).to(g.dtype) for g, (_, m) in zip(gs, todo[start:stop])]
        if maximize:
            gs = torch._foreach_neg(gs)
        mt = torch._foreach_lerp(ms, gs, 1 - beta1)  # the eager loop's m_t
        torch._foreach_sign_(mt)
        torch._foreach_mul_(mt, torch._foreach_sign(gs))  # 1 where the signs agree, else 0 or -1
        torch._foreach_clamp_min_(mt, 0.0)
        counts += [n.double() for n in torch._foreach_norm(mt, 1)]
        start = stop
    if not counts:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack(counts)


def count_agree(rule: PreparedRule, batch: Batch) -> Tensor:
    """``count_agree_lists`` for every tensor of the batch, in the rule's compute dtype."""
    return count_agree_lists(batch.g, batch.m, rule.beta1, rule.maximize, rule.dtype)


def default_chunk_size(device: torch.device | str) -> int:
    """The eager loop's chunk size when none is given: ``DEFAULT_CHUNK_SIZE`` on CPU,
    ``GPU_CHUNK_SIZE`` on any other device."""
    return DEFAULT_CHUNK_SIZE if torch.device(device).type == "cpu" else GPU_CHUNK_SIZE


@dataclass
class _Buffers:
    """Per-chunk work space, feature-major, ``k`` = chunk size."""

    z: Tensor  # [(F+H) * k] LSTM input [x; h]
    gates: Tensor  # [4H * k]
    t: Tensor  # [H * k] sigmoid(-2 c'), then h' when h is staged
    y: Tensor  # [2 * k] head output
    d: Tensor  # [k] denominator sqrt(v_hat) + eps
    a: Tensor  # [k] Adam direction, then the step u_t
    s: Tensor  # [k] sign(m_t) (sign-equivariant rules)
    g: Tensor  # [k] staged gradient (maximize / other dtype / packed)
    m: Tensor  # [k] staged m (other dtype / packed)
    v: Tensor  # [k] staged v
    p: Tensor  # [k] staged low-precision parameter
    h: Tensor  # [H * k] packed h
    c: Tensor  # [H * k] staged / packed c


# One cache per thread: two optimizers stepping in two threads must not share work space.
_BUFFER_CACHE = threading.local()


def buffers(device: torch.device, dtype: torch.dtype, f: int, hs: int, k: int) -> _Buffers:
    """This thread's work space for ``k``-coordinate chunks (grown, never shrunk)."""
    cache = getattr(_BUFFER_CACHE, "d", None)
    if cache is None:
        cache = _BUFFER_CACHE.d = {}
    key = (device, dtype, f, hs)
    buf = cache.get(key)
    if buf is None or buf.d.numel() < k:
        def e(n):
            return torch.empty(n * k, device=device, dtype=dtype)

        buf = _Buffers(z=e(f + hs), gates=e(4 * hs), t=e(hs), y=e(2), d=e(1), a=e(1), s=e(1), g=e(1), m=e(1),
                       v=e(1), p=e(1), h=e(hs), c=e(hs))
        if len(cache) > 8:  # bounded: one entry per (device, dtype, architecture) in use
            cache.clear()
        cache[key] = buf
    return buf


class _Scaled(NamedTuple):
    """The prepared rule's weights with the g-gate rows and the head scaled by 2 (exact)."""

    weight: Tensor  # [4H, F+H]
    bias: Tensor  # [4H, 1]
    head_w: Tensor  # [2, H]
    head_b: Tensor  # [2, 1]
    gate_biases: Tensor | None  # [4H, T] the batch's per-tensor gate biases (context rules), scaled
    head_biases: Tensor | None  # [2, T]


def _scaled(rule: PreparedRule, batch: Batch) -> _Scaled:
    hs = rule.hidden_size
    weight = rule.weight.clone()
    bias = rule.bias.clone()
    weight[2 * hs : 3 * hs] *= 2
    bias[2 * hs : 3 * hs] *= 2
    gate_biases = head_biases = None
    if batch.gate_bias is not None:
        gate_biases = batch.gate_bias.T.clone()
        gate_biases[2 * hs : 3 * hs] *= 2
        head_biases = batch.head_bias.T * 2
    return _Scaled(weight, bias[:, None], rule.head_weight * 2, (rule.head_bias * 2)[:, None], gate_biases,
                   head_biases)


def _chunk_step(rule: PreparedRule, w: _Scaled, buf: _Buffers, g, m, v, h, c, p, ib1, sib2, biases=None,
                cscale=None) -> Tensor:
    """The rule on one chunk of k coordinates, in place: m, v [k]; h, c [H, k] (row-strided views
    are fine); p [k] or None. ``ib1`` = 1/(1-b1^t) and ``sib2`` = sqrt(1/(1-b2^t)) are floats or
    [k] tensors. ``biases``: ``None`` (the rule's), or the (gate [4H, 1|k], head [2, 1|k]) biases
    of a context rule, scaled like ``_Scaled``. ``cscale``: the kept steps' multiplier of the
    cautious mask, ``None`` (the rule's constant) or a ``[1]`` / ``[k]`` tensor (the rescale's,
    ``Batch.cautious``). Returns the step u_t [k] (a view of ``buf.a``, valid until the next
    chunk)."""
    cdt = rule.dtype
    hs, nf, k = rule.hidden_size, rule.num_features, g.shape[0]
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

    m.lerp_(g, rule.one_minus_beta1)
    v.mul_(rule.beta2).addcmul_(g, g, value=rule.one_minus_beta2)
    torch.sqrt(v, out=d)
    d.mul_(sib2).add_(rule.eps)  # sqrt(v_hat) + eps
    torch.div(m, d, out=a)
    a.mul_(ib1)  # the Adam direction
    for row, kind in enumerate(rule.feature_kinds):
        if kind == 0:  # g_norm
            torch.div(g, d, out=x[row])
        else:  # m_norm
            x[row].copy_(a)
    if rule.sign_equivariant:
        sg = torch.sign(m, out=buf.s[:k])
        x.mul_(sg)
    x.clamp_(-rule.feature_clip, rule.feature_clip)

    gate_b, head_b = (w.bias, w.head_b) if biases is None else biases
    torch.addmm(gate_b, w.weight, z, out=gates)
    gates.sigmoid_()
    gi, gf, gg, go = gates[0:hs], gates[hs : 2 * hs], gates[2 * hs : 3 * hs], gates[3 * hs :]
    c.mul_(gf).addcmul_(gi, gg, value=2).sub_(gi)  # c' = f c + i (2 sigmoid(2.) - 1)
    torch.mul(c, -2, out=t)
    t.sigmoid_()  # sigmoid(-2c'), so tanh(c') = 1 - 2t
    torch.addcmul(go, go, t, value=-2, out=h_out)  # h' = o tanh(c')
    torch.addmm(head_b, w.head_w, h_out, out=y)
    y.sigmoid_()  # tanh(y) = 2 y - 1
    y0, y1 = y[0], y[1]
    s, r = rule.log_scale_bound, rule.direction_bound
    y0.mul_(2 * s).sub_(s).exp_()  # exp(s tanh y_0)
    if rule.sign_equivariant:  # u = a exp(s tanh y_0) + sign(m) r tanh y_1
        a.mul_(y0).add_(y1.mul_(2 * r).sub_(r).mul_(sg))
    else:
        a.mul_(y0).add_(y1, alpha=2 * r).sub_(r)  # u = a exp(s tanh y_0) + r tanh y_1
    # a coordinate whose gradient has always been exactly 0 (v = 0) does not move: a select (a NaN
    # elsewhere stays NaN)
    a.masked_fill_(v == 0, 0.0)
    if rule.cautious_scale:  # the cautious mask: no step where sign(m) sign(g) <= 0, the rest times the scale
        keep = torch.sign(g, out=buf.s[:k]).mul_(torch.sign(m, out=d))  # s and d are not read again
        if cscale is not None:
            a.mul_(cscale)
        elif rule.cautious_scale != 1.0:  # a multiply by 1 changes no bit: skip it
            a.mul_(rule.cautious_scale)
        a.masked_fill_(keep <= 0, 0.0)

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


def update(rule: PreparedRule, batch: Batch, todo: Sequence[int], chunk_size: int | None = None) -> None:
    """The eager chunk loop over the tensors ``todo`` (indices into the batch), in place;
    ``chunk_size`` ``None``: ``default_chunk_size`` of their device."""
    numels = batch.numels
    device = batch.p[todo[0]].device
    if chunk_size is None:
        chunk_size = default_chunk_size(device)
    w = _scaled(rule, batch)
    buf = buffers(device, rule.dtype, rule.num_features, rule.hidden_size,
                  min(chunk_size, sum(numels[i] for i in todo)))
    inplace_min = max(1, chunk_size // 2)
    small = [i for i in todo if numels[i] < inplace_min]
    cscales = None if batch.cautious is None else batch.cautious.to(rule.dtype)

    for i in todo:
        n = numels[i]
        if n < inplace_min:
            continue
        # Equal pieces of at most chunk_size (not chunk_size + a tiny tail).
        pieces = -(-n // chunk_size)
        step = -(-n // pieces)
        for s in range(0, n, step):
            e = min(n, s + step)
            _chunk_step(rule, w, buf, batch.g[i][s:e], batch.m[i][s:e], batch.v[i][s:e], batch.h[i][:, s:e],
                        batch.c[i][:, s:e], batch.p[i][s:e], batch.ib1[i], batch.sib2[i], _biases_of(w, [i]),
                        None if cscales is None else cscales[i : i + 1])

    for chunk in chunk_plan([numels[i] for i in small], chunk_size):
        _packed_chunk(rule, w, buf, batch, [(small[j], s, e) for j, s, e in chunk], device, cscales)


def _biases_of(w: _Scaled, idx: Sequence[int], lens: Tensor | None = None):
    """The scaled (gate, head) biases of tensor ``idx[0]`` as columns, or with ``lens`` one column
    per coordinate of the segments of tensors ``idx``; ``None`` for a rule without context."""
    if w.gate_biases is None:
        return None
    if lens is None:
        i = idx[0]
        return w.gate_biases[:, i : i + 1], w.head_biases[:, i : i + 1]
    sel = torch.tensor(list(idx), device=w.gate_biases.device)
    return (w.gate_biases.index_select(1, sel).repeat_interleave(lens, dim=1),
            w.head_biases.index_select(1, sel).repeat_interleave(lens, dim=1))


def _packed_chunk(rule: PreparedRule, w: _Scaled, buf: _Buffers, batch: Batch, segs, device, cscales=None) -> None:
    """Small tensors: gather their segments into the chunk buffers, step, scatter back."""
    cdt, hs = rule.dtype, rule.hidden_size
    ib1, sib2 = batch.ib1, batch.sib2
    k = sum(e - s for _, s, e in segs)
    g, m, v = buf.g[:k], buf.m[:k], buf.v[:k]
    h, c = buf.h[: hs * k].view(hs, k), buf.c[: hs * k].view(hs, k)
    for src, out in ((batch.g, g), (batch.m, m), (batch.v, v)):
        torch.cat([src[i][s:e].to(cdt) for i, s, e in segs], out=out)
    for src, out in ((batch.h, h), (batch.c, c)):
        torch.cat([src[i][:, s:e].to(cdt) for i, s, e in segs], dim=1, out=out)
    idx = [i for i, _, _ in segs]
    if len({ib1[i] for i in idx}) == 1:
        cb1, cb2 = ib1[idx[0]], sib2[idx[0]]
    else:  # tensors at different steps share this chunk: per-coordinate corrections
        lens = torch.tensor([e - s for _, s, e in segs], device=device)
        cb1 = torch.tensor([ib1[i] for i in idx], device=device, dtype=cdt).repeat_interleave(lens)
        cb2 = torch.tensor([sib2[i] for i in idx], device=device, dtype=cdt).repeat_interleave(lens)
    biases = None
    if w.gate_biases is not None:  # per-coordinate biases when tensors share the chunk
        biases = _biases_of(w, idx) if len(set(idx)) == 1 else _biases_of(
            w, idx, torch.tensor([e - s for _, s, e in segs], device=device))
    cscale = None
    if cscales is not None:  # per coordinate: the multiplier of the tensor it belongs to
        sel = torch.tensor(idx, device=cscales.device)
        cscale = cscales.index_select(0, sel).repeat_interleave(
            torch.tensor([e - s for _, s, e in segs], device=cscales.device))
    u = _chunk_step(rule, w, buf, g, m, v, h, c, None, cb1, cb2, biases, cscale)

    offs, off = [], 0
    for _, s, e in segs:
        offs.append((off, off + e - s))
        off += e - s
    for dsts, src in ((batch.m, m), (batch.v, v)):
        torch._foreach_copy_([dsts[i][s:e] for i, s, e in segs], [src[a:b] for a, b in offs])
    for dsts, src in ((batch.h, h), (batch.c, c)):
        torch._foreach_copy_([dsts[i][:, s:e] for i, s, e in segs], [src[:, a:b] for a, b in offs])
    p_dst = [batch.p[i][s:e] for i, s, e in segs]
    u_src = [u[a:b] for a, b in offs]
    if all(p.dtype == cdt for p in p_dst):
        if rule.decay != 1.0:
            torch._foreach_mul_(p_dst, rule.decay)
        torch._foreach_add_(p_dst, u_src, alpha=-rule.lr)
    else:  # low-precision params: fp32 maths, one rounding to the param's dtype
        for p, uu in zip(p_dst, u_src):
            p.copy_(p.to(cdt).mul_(rule.decay).add_(uu, alpha=-rule.lr))
