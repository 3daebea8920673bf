"""The fused learned update as one Triton kernel launch per group (imported only when Triton is).

One program handles ``BLOCK`` consecutive coordinates of one tensor. The launch covers every
tensor of the group through three small tables (a multi-tensor launch, as apex's
``multi_tensor_apply`` does, but with no per-chunk host loop):

* ``ptrs`` int64 ``[6, T]``: the addresses of p, g, m, v, h, c of each tensor (read, cast to
  typed pointers in the kernel), so no tensor is copied or packed;
* ``blocks`` int64 ``[2, NB]``: for each program, its tensor index and first coordinate;
* ``coefs`` ``[2T]`` in the compute dtype: per tensor the bias corrections 1/(1-b1^t) and
  sqrt(1/(1-b2^t)) (tensors may be at different steps);
* ``flags`` int32 ``[T]`` on the device: 0 for a tensor whose gradient is not finite, which the
  kernel then leaves untouched (every load and store masked off), so the non-finite skip needs no
  host read.

The rule's constants are named fp64 scalar arguments (``beta1``, ...), rounded once to the
compute dtype in the kernel; the weights are the prepared rule's (``kernels/rule.py``), as they
are. ``kernels/triton.py`` is the backend around this module.

Format version 2 rules are three constexpr switches, so a version 1 rule compiles to the same
kernel as before: ``SIGN_EQ`` (sigma = sign(m_t), 0 where m_t = 0, multiplies the features
before the clip and the additive direction), ``PER_TENSOR_BIAS`` (``b_ptr`` / ``hb_ptr`` are
``[T, 4H]`` / ``[T, 2]`` tables, one row per tensor of the launch: a rule with context), and
``CAUTIOUS`` (the cautious mask, ``update.lstm_rule``: no step unless sign(m_t) sign(g_t) > 0, the
kept steps times ``cautious_scale``; with ``RESCALE`` times tensor tid's multiplier ``cscales[tid]``
instead, the cautious rescale's, counted before the launch).

All maths is in the compute dtype (fp32, or fp64 for fp64 parameters); p, g, m, v, h, c are read
and written in their own dtypes (fp32 / bf16 / fp16 parameters, bf16 LSTM state). Offsets are
int64, so tensors above 2^31 elements are addressed correctly. The launch goes on the current
stream (Triton's default) and nothing in here waits for the device: the tables are built on the
host and copied from pinned memory with ``non_blocking=True``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .rule import host_to

# Coordinates per program and warps per program, by (parameter dtype, LSTM state dtype), for
# H = 4, F = 2. Registers per thread and spills measured by compiling the kernel for sm_80 and
# sm_90 with Triton's bundled ptxas, no GPU needed (``kernels/triton_compile.py``; the whole table
# is benchmarks/results/triton_compile.md). What decides the registers is the coordinates per
# thread, BLOCK / (32 num_warps), since each holds four [H] gate columns and its LSTM state:
#   4 per thread (1024/8, 512/4): 128 registers (fp32 maths), fp64 255 plus a 424-504 B stack
#       (spills): at 128, 2 blocks of 256 threads per SM (65536 registers), 25% occupancy;
#   2 per thread (512/8, 256/4): 71-80 (fp32), fp64 254 plus a 16-48 B stack;
#   1 per thread (256/8): 48 (fp32 maths; 64 with bf16 state on sm_80), fp64 242-244, no stack.
# Timed on an H200 (sm_90; benchmarks/results/gpu-h200/README.md, the shipped default's weights,
# 1e8 parameters): 256 coordinates over 4 warps (2 per thread) took 10-16% less time per call
# than over 8 (1 per thread) in every pass: fp32 and fp32 with bf16 state three passes each, bf16
# parameters one. 4 per thread was no faster than 2, and 512 over 2 warps (8 per thread) 2.4x
# slower. fp64 stays at 1 per thread, the only launch without spills there (not timed); fp16 was
# not timed (it compiles to bf16's registers). LAUNCH_OVERRIDE, when set, replaces this table at
# each launch (benchmarks/gpu_check.py sweeps with it).
LAUNCH = {  # (param dtype, state dtype): (BLOCK, num_warps)  # registers on sm_80 / sm_90
    (torch.float32, torch.float32): (256, 4),  # 72 / 72
    (torch.bfloat16, torch.float32): (256, 4),  # 72 / 72
    (torch.float16, torch.float32): (256, 4),  # 72 / 72
    (torch.float32, torch.bfloat16): (256, 4),  # 72 / 72
    (torch.bfloat16, torch.bfloat16): (256, 4),  # 72 / 72
    (torch.float16, torch.bfloat16): (256, 4),  # 72 / 72
    (torch.float64, torch.float64): (256, 8),  # 242 / 244
}
DEFAULT_LAUNCH = (256, 8)
LAUNCH_OVERRIDE: tuple[int, int] | None = None


def launch_config(p_dtype: torch.dtype, s_dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK, num_warps) for a launch over parameters of ``p_dtype`` with LSTM state of ``s_dtype``."""
    if LAUNCH_OVERRIDE is not None:
        return LAUNCH_OVERRIDE
    return LAUNCH.get((p_dtype, s_dtype), DEFAULT_LAUNCH)


_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}

@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh(x) = 2 sigmoid(2x) - 1, exact, and avoids relying on a tanh intrinsic per backend.
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _feature(kind: tl.constexpr, g, d, a, clip, sg, SIGN_EQ: tl.constexpr):
    if kind == 0:
        x = g / d
    else:
        x = a
    if SIGN_EQ:  # sign-invariant inputs: sign(m_t) x, before the clip
        x = sg * x
    return tl.minimum(tl.maximum(x, -clip), clip)


@triton.jit
def _gate_col(w_ptr, gate: tl.constexpr, col: tl.constexpr, rows, rmask, H: tl.constexpr, FH: tl.constexpr):
    # Column `col` of gate block `gate` of the [4H, F+H] weight, as an [HP, 1] tile.
    return tl.load(w_ptr + (gate * H + rows) * FH + col, mask=rmask, other=0.0)[:, None]


@triton.jit
def _bias_col(b_ptr, gate: tl.constexpr, rows, rmask, H: tl.constexpr):
    # The bias of gate block `gate` as an [HP, 1] tile.
    return tl.load(b_ptr + gate * H + rows, mask=rmask, other=0.0)[:, None]


@triton.jit
def _const(x, CDT: tl.constexpr):
    # An fp64 scalar argument as a CDT scalar, rounded once (also in the interpreter, where the
    # argument arrives as a Python float).
    return tl.full((), x, CDT)


@triton.jit
def lstm_update_kernel(
    ptrs, blocks, coefs, w_ptr, b_ptr, hw_ptr, hb_ptr, numels, flags, cscales, T, NB,
    beta1: tl.float64, beta2: tl.float64, one_minus_beta1: tl.float64, one_minus_beta2: tl.float64,
    eps_: tl.float64, feature_clip: tl.float64, lr_: tl.float64, decay_: tl.float64,
    log_scale_bound: tl.float64, direction_bound: tl.float64, cautious_scale: tl.float64,
    P_DT: tl.constexpr, G_DT: tl.constexpr, M_DT: tl.constexpr, S_DT: tl.constexpr,
    CDT: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, F: tl.constexpr,
    KIND0: tl.constexpr, KIND1: tl.constexpr, MAXIMIZE: tl.constexpr, BLOCK: tl.constexpr,
    SIGN_EQ: tl.constexpr = False, PER_TENSOR_BIAS: tl.constexpr = False, CAUTIOUS: tl.constexpr = False,
    RESCALE: tl.constexpr = False,
):
    pid = tl.program_id(0)
    tid = tl.load(blocks + pid)
    start = tl.load(blocks + NB + pid)
    n = tl.load(numels + tid)
    p_ptr = tl.load(ptrs + tid).to(tl.pointer_type(P_DT))
    g_ptr = tl.load(ptrs + T + tid).to(tl.pointer_type(G_DT))
    m_ptr = tl.load(ptrs + 2 * T + tid).to(tl.pointer_type(M_DT))
    v_ptr = tl.load(ptrs + 3 * T + tid).to(tl.pointer_type(M_DT))
    h_ptr = tl.load(ptrs + 4 * T + tid).to(tl.pointer_type(S_DT))
    c_ptr = tl.load(ptrs + 5 * T + tid).to(tl.pointer_type(S_DT))
    if PER_TENSOR_BIAS:  # tensor tid's gate and head biases (its context's): rows of [T, 4H] and [T, 2]
        b_ptr = b_ptr + tid * (4 * H)
        hb_ptr = hb_ptr + tid * 2

    ib1 = tl.load(coefs + tid)
    sib2 = tl.load(coefs + T + tid)
    b1 = _const(beta1, CDT)
    b2 = _const(beta2, CDT)
    eps = _const(eps_, CDT)
    clip = _const(feature_clip, CDT)
    lr = _const(lr_, CDT)
    decay = _const(decay_, CDT)
    scale = _const(log_scale_bound, CDT)
    dirb = _const(direction_bound, CDT)

    offs = start + tl.arange(0, BLOCK).to(tl.int64)  # int64: tensors may exceed 2^31 elements
    # a tensor with a non-finite gradient (flag 0): no coordinate in range, nothing loaded or stored
    mask = offs < tl.where(tl.load(flags + tid) != 0, n, 0)

    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(CDT)
    if MAXIMIZE:
        g = -g
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(CDT)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(CDT)
    # 1 - beta from the host in double precision: 1 - 0.999 rounded in fp32 is off by 1.3e-5
    m = b1 * m + _const(one_minus_beta1, CDT) * g
    v = b2 * v + _const(one_minus_beta2, CDT) * g * g
    d = tl.sqrt(v) * sib2 + eps
    a = m * ib1 / d
    if SIGN_EQ:  # sign(m_t), 0 where m_t = 0
        sg = tl.where(m > 0.0, 1.0, tl.where(m < 0.0, -1.0, 0.0)).to(CDT)
    else:
        sg = a  # unused
    x0 = _feature(KIND0, g, d, a, clip, sg, SIGN_EQ)

    FH: tl.constexpr = F + H
    rows = tl.arange(0, HP)
    rmask = rows < H
    # Gate pre-activations as [HP, BLOCK] tiles: bias + W[:, :F] x + W[:, F:] h.
    gi = _bias_col(b_ptr, 0, rows, rmask, H) + _gate_col(w_ptr, 0, 0, rows, rmask, H, FH) * x0[None, :]
    gf = _bias_col(b_ptr, 1, rows, rmask, H) + _gate_col(w_ptr, 1, 0, rows, rmask, H, FH) * x0[None, :]
    gg = _bias_col(b_ptr, 2, rows, rmask, H) + _gate_col(w_ptr, 2, 0, rows, rmask, H, FH) * x0[None, :]
    go = _bias_col(b_ptr, 3, rows, rmask, H) + _gate_col(w_ptr, 3, 0, rows, rmask, H, FH) * x0[None, :]
    if F == 2:
        x1 = _feature(KIND1, g, d, a, clip, sg, SIGN_EQ)
        gi += _gate_col(w_ptr, 0, 1, rows, rmask, H, FH) * x1[None, :]
        gf += _gate_col(w_ptr, 1, 1, rows, rmask, H, FH) * x1[None, :]
        gg += _gate_col(w_ptr, 2, 1, rows, rmask, H, FH) * x1[None, :]
        go += _gate_col(w_ptr, 3, 1, rows, rmask, H, FH) * x1[None, :]
    for q in tl.static_range(H):
        hq = tl.load(h_ptr + q * n + offs, mask=mask, other=0.0).to(CDT)[None, :]
        gi += _gate_col(w_ptr, 0, F + q, rows, rmask, H, FH) * hq
        gf += _gate_col(w_ptr, 1, F + q, rows, rmask, H, FH) * hq
        gg += _gate_col(w_ptr, 2, F + q, rows, rmask, H, FH) * hq
        go += _gate_col(w_ptr, 3, F + q, rows, rmask, H, FH) * hq

    tile = rows[:, None].to(tl.int64) * n + offs[None, :]
    tmask = rmask[:, None] & mask[None, :]
    c = tl.load(c_ptr + tile, mask=tmask, other=0.0).to(CDT)
    c = _sigmoid(gf) * c + _sigmoid(gi) * _tanh(gg)
    h = _sigmoid(go) * _tanh(c)  # padded rows: zero weights and c = 0, so h = 0 there
    tl.store(c_ptr + tile, c.to(S_DT), mask=tmask)
    tl.store(h_ptr + tile, h.to(S_DT), mask=tmask)

    y0 = tl.sum(tl.load(hw_ptr + rows, mask=rmask, other=0.0)[:, None] * h, axis=0) + tl.load(hb_ptr)
    y1 = tl.sum(tl.load(hw_ptr + H + rows, mask=rmask, other=0.0)[:, None] * h, axis=0) + tl.load(hb_ptr + 1)
    if SIGN_EQ:  # the additive direction times sign(m_t): a sign flip of g flips u exactly
        u = a * tl.exp(scale * _tanh(y0)) + sg * (dirb * _tanh(y1))
    else:
        u = a * tl.exp(scale * _tanh(y0)) + dirb * _tanh(y1)
    # a coordinate whose gradient has always been exactly 0 (v = 0) does not move (a select, not a
    # product with a mask: a NaN elsewhere stays NaN)
    u = tl.where(v == 0.0, 0.0, u)
    if CAUTIOUS:  # no step unless m_t and g have the same sign (compared as signs), the rest scaled
        agree = ((m > 0.0) & (g > 0.0)) | ((m < 0.0) & (g < 0.0))
        if RESCALE:  # tensor tid's multiplier, n / (k + 1) times the scale
            u = tl.where(agree, u * tl.load(cscales + tid), 0.0)
        else:
            u = tl.where(agree, u * _const(cautious_scale, CDT), 0.0)

    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(CDT)
    tl.store(p_ptr + offs, (p * decay - lr * u).to(P_DT), mask=mask)
    tl.store(m_ptr + offs, m.to(M_DT), mask=mask)
    tl.store(v_ptr + offs, v.to(M_DT), mask=mask)


_BLOCK_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _block_table(numels: tuple[int, ...], device: torch.device, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([2, NB] int64 tensor index and first coordinate of every program, [T] int64 sizes).
    They depend only on the sizes, so they are built once per model and cached."""
    key = (numels, str(device), block)
    tab = _BLOCK_TABLES.get(key)
    if tab is None:
        count_list = [math.ceil(n / block) for n in numels]
        counts = torch.tensor(count_list, dtype=torch.int64)
        tid = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int64), counts)
        first = torch.cumsum(counts, 0) - counts
        start = (torch.arange(sum(count_list), dtype=torch.int64) - first[tid]) * block
        tab = (host_to(torch.stack([tid, start]).contiguous(), device),
               host_to(torch.tensor(numels, dtype=torch.int64), device))
        if len(_BLOCK_TABLES) > 64:  # bounded: one entry per (model, device) in use
            _BLOCK_TABLES.clear()
        _BLOCK_TABLES[key] = tab
    return tab


_ALL_FINITE: dict[tuple[int, str], torch.Tensor] = {}


def _ones(t: int, device: torch.device) -> torch.Tensor:
    """[t] int32 ones on ``device`` (the flags of a call without a non-finite check), cached."""
    key = (t, str(device))
    ones = _ALL_FINITE.get(key)
    if ones is None:
        if len(_ALL_FINITE) > 64:
            _ALL_FINITE.clear()
        ones = _ALL_FINITE[key] = torch.ones(t, dtype=torch.int32, device=device)
    return ones


def _step_tables(ptrs: list[int], coefs: list[float], dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's two tables on ``device``, ``[6, T]`` int64 addresses and ``[2T]`` bias corrections
    in ``dtype``, sent in one pinned copy (each copy is a few microseconds of the host's time, which
    bounds a small model's step): one int64 buffer whose tail holds the corrections' bytes."""
    t = len(ptrs) // 6
    words = -(-len(coefs) * dtype.itemsize // 8)
    host = torch.empty(6 * t + words, dtype=torch.int64)
    host[: 6 * t] = torch.tensor(ptrs, dtype=torch.int64)
    host[6 * t :].view(dtype)[: len(coefs)] = torch.tensor(coefs, dtype=dtype)
    table = host_to(host, device)
    return table[: 6 * t].view(6, t), table[6 * t :].view(dtype)[: len(coefs)]


def launch(rule, params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, ib1, sib2, flags=None,
           gate_bias=None, head_bias=None, cscales=None) -> None:
    """One launch over contiguous tensors of one dtype per role, in any shape (``lstm_hs`` /
    ``lstm_cs`` ``[H, *p.shape]``, read as ``[H, n]``; ``ib1``/``sib2``: their
    bias corrections) with the prepared rule ``rule``. ``flags``: int32 ``[T]`` on the device, 0
    where a tensor must be left untouched; ``None``: every tensor is updated. ``gate_bias`` /
    ``head_bias``: ``[T, 4H]`` / ``[T, 2]`` per-tensor biases on the device, in the compute dtype,
    replacing the rule's (a rule with context), or ``None``. ``cscales``: ``[T]`` on the device in
    the compute dtype, the kept steps' multipliers of a rule with the cautious rescale
    (``Batch.cautious``), or ``None``."""
    device = params[0].device
    hs, nf = rule.hidden_size, rule.num_features
    numels = tuple(p.numel() for p in params)
    t = len(params)
    ptrs, coefs = _step_tables([x.data_ptr() for lst in (params, grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs)
                                for x in lst], list(ib1) + list(sib2), rule.dtype, device)
    block, num_warps = launch_config(params[0].dtype, lstm_hs[0].dtype)
    blocks, numels_t = _block_table(numels, device, block)
    nb = blocks.shape[1]
    flags = _ones(t, device) if flags is None else flags
    kinds = rule.feature_kinds
    per_tensor = gate_bias is not None
    lstm_update_kernel[(nb,)](
        ptrs, blocks, coefs,
        rule.weight, gate_bias.contiguous() if per_tensor else rule.bias, rule.head_weight,
        head_bias.contiguous() if per_tensor else rule.head_bias,
        numels_t, flags, coefs if cscales is None else cscales.contiguous(), t, nb,
        rule.beta1, rule.beta2, rule.one_minus_beta1, rule.one_minus_beta2, rule.eps, rule.feature_clip,
        rule.lr, rule.decay, rule.log_scale_bound, rule.direction_bound, rule.cautious_scale,
        P_DT=_TL_DTYPES[params[0].dtype], G_DT=_TL_DTYPES[grads[0].dtype],
        M_DT=_TL_DTYPES[exp_avgs[0].dtype], S_DT=_TL_DTYPES[lstm_hs[0].dtype], CDT=_TL_DTYPES[rule.dtype],
        H=hs, HP=triton.next_power_of_2(hs), F=nf, KIND0=kinds[0], KIND1=kinds[-1],
        MAXIMIZE=bool(rule.maximize), BLOCK=block, SIGN_EQ=bool(rule.sign_equivariant), PER_TENSOR_BIAS=per_tensor,
        CAUTIOUS=rule.cautious_scale > 0, RESCALE=cscales is not None, num_warps=num_warps,
    )
    # The host tables above may be freed now: pinned blocks are recycled only after the copy
    # that used them completes (torch's caching host allocator records the stream).


INTERPRETED = type(lstm_update_kernel).__name__ == "InterpretedFunction"
