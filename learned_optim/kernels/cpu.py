"""A fused CPU loop for the learned update, compiled at first use with the system C compiler.

The eager torch path (``update._batched_torch_update``) spends its time in ~30 passes over each
chunk, one torch op each (measured ~25-35 ms per step at 1e6 parameters on one core). This is the
same maths as one C loop over tiles of ``TILE`` coordinates that stay in L1: each coordinate's
g, m, v, p, h, c are read once and written once, and nothing but the tile lives in between.
``-O3 -march=native -ffast-math`` lets GCC vectorize every loop (fp32 exp is an inlined
polynomial; fp64 calls glibc's vectorized exp).

Fallback-safe: no compiler, a failed build, or ``LEARNED_OPTIM_C_KERNEL=0`` in the environment
make ``available()`` false and the torch path runs unchanged. No torch headers are needed (the
library is loaded with ``ctypes``, tensors passed as raw pointers), so a build takes about a
second; it is cached per source, flags and CPU under ``$XDG_CACHE_HOME/learned_optim``.

Covered dtypes: fp32 maths with fp32 p, g, m, v and fp32 or bf16 LSTM state; fp64 throughout.
Anything else (bf16/fp16 parameters) stays on the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["available", "supports", "run", "MAX_HIDDEN"]

# Coordinates per tile. The tile's work arrays are (4H + H + 6) * TILE values: for H = 4 and
# fp32 that is 13 KiB, well inside the 32 KiB L1 data cache per core (`lscpu`: 64 KiB for 2).
TILE = 128
# Largest hidden size the C loop handles (its work arrays are sized for it at compile time).
MAX_HIDDEN = 16

_BODY = r"""
/* Each stage is its own non-inlined function over one tile: GCC 12 vectorized these loops on
   their own but not inside the one big loop nest ("no vectype for stmt"). */
__attribute__((noinline)) static void __NAME___moments(
        int len, const __CT__* restrict g, __CT__* restrict m, __CT__* restrict v, __CT__* restrict x0,
        __CT__* restrict x1, __CT__* restrict a, const __CT__* restrict k, __CT__ ib1, __CT__ sib2,
        __CT__ sgn, __CT__ s0g, __CT__ s1g) {
    /* 1 - beta comes from the host in double precision: 1 - 0.999f in float is off by 1.3e-5 */
    const __CT__ b1 = k[0], b2 = k[1], eps = k[2], clip = k[3], omb1 = k[8], omb2 = k[9];
    const __CT__ s0a = (__CT__)1 - s0g, s1a = (__CT__)1 - s1g;
    for (int jj = 0; jj < len; jj++) {
        __CT__ gv = sgn * g[jj];
        __CT__ mv = m[jj] * b1 + gv * omb1;
        __CT__ vv = v[jj] * b2 + gv * gv * omb2;
        m[jj] = mv;
        v[jj] = vv;
        __CT__ rd = (__CT__)1 / (__SQRT__(vv) * sib2 + eps);
        __CT__ av = mv * ib1 * rd;
        __CT__ gn = gv * rd;
        /* feature = sel_g * (g/d) + sel_a * a: arithmetic instead of a branch */
        __CT__ f0 = s0g * gn + s0a * av;
        __CT__ f1 = s1g * gn + s1a * av;
        x0[jj] = f0 < -clip ? -clip : (f0 > clip ? clip : f0);
        x1[jj] = f1 < -clip ? -clip : (f1 > clip ? clip : f1);
        a[jj] = av;
    }
}

__attribute__((noinline)) static void __NAME___cell(
        int len, const __CT__* restrict gi, const __CT__* restrict gf, const __CT__* restrict gg,
        const __CT__* restrict go, __ST__* restrict cq, __ST__* restrict hq, __CT__* restrict y0,
        __CT__* restrict y1, __CT__ hw0, __CT__ hw1) {
    for (int jj = 0; jj < len; jj++) {
        __CT__ ig = (__CT__)1 / ((__CT__)1 + __EXP__(-gi[jj]));
        __CT__ fg = (__CT__)1 / ((__CT__)1 + __EXP__(-gf[jj]));
        __CT__ cg = (__CT__)2 / ((__CT__)1 + __EXP__((__CT__)-2 * gg[jj])) - (__CT__)1;
        __CT__ og = (__CT__)1 / ((__CT__)1 + __EXP__(-go[jj]));
        __CT__ cn = fg * __LOAD__(cq[jj]) + ig * cg;
        __CT__ hv = og * ((__CT__)2 / ((__CT__)1 + __EXP__((__CT__)-2 * cn)) - (__CT__)1);
        cq[jj] = __STORE__(cn);
        hq[jj] = __STORE__(hv);
        y0[jj] += hw0 * hv;
        y1[jj] += hw1 * hv;
    }
}

__attribute__((noinline)) static void __NAME___head(
        int len, const __CT__* restrict y0, const __CT__* restrict y1, const __CT__* restrict a,
        __CT__* restrict p, const __CT__* restrict k) {
    const __CT__ lr = k[4], decay = k[5], scale = k[6], dirb = k[7];
    for (int jj = 0; jj < len; jj++) {
        __CT__ t0 = (__CT__)2 / ((__CT__)1 + __EXP__((__CT__)-2 * y0[jj])) - (__CT__)1;
        __CT__ t1 = (__CT__)2 / ((__CT__)1 + __EXP__((__CT__)-2 * y1[jj])) - (__CT__)1;
        __CT__ u = a[jj] * __EXP__(scale * t0) + dirb * t1;
        p[jj] = p[jj] * decay - lr * u;
    }
}

void __NAME__(int64_t ntask, const int64_t* tasks, const int64_t* ptrs, const int64_t* numels, int64_t T,
          const __CT__* coefs, const __CT__* w, const __CT__* bias, const __CT__* hw, const __CT__* hb,
          const __CT__* k, int H, int F, int kind0, int kind1, int maximize) {
    const __CT__ sgn = maximize ? (__CT__)-1 : (__CT__)1;
    const __CT__ s0g = kind0 == 0, s1g = kind1 == 0;
    const int FH = F + H;
    __CT__ x0[TILE], x1[TILE], a[TILE], hin[HMAX][TILE], gt[4 * HMAX][TILE], y0[TILE], y1[TILE];
    for (int64_t t = 0; t < ntask; t++) {
        const int64_t tid = tasks[3 * t], begin = tasks[3 * t + 1], end = tasks[3 * t + 2];
        const int64_t n = numels[tid];
        const __CT__ ib1 = coefs[tid], sib2 = coefs[T + tid];
        for (int64_t j0 = begin; j0 < end; j0 += TILE) {
            const int len = (int)((end - j0) < TILE ? (end - j0) : TILE);
            __CT__* p = (__CT__*)ptrs[tid] + j0;
            const __CT__* g = (const __CT__*)ptrs[T + tid] + j0;
            __CT__* m = (__CT__*)ptrs[2 * T + tid] + j0;
            __CT__* v = (__CT__*)ptrs[3 * T + tid] + j0;
            __ST__* h = (__ST__*)ptrs[4 * T + tid] + j0;
            __ST__* c = (__ST__*)ptrs[5 * T + tid] + j0;
            __NAME___moments(len, g, m, v, x0, x1, a, k, ib1, sib2, sgn, s0g, s1g);
            for (int q = 0; q < H; q++) {
                const __ST__* restrict hq = h + q * n;
                for (int jj = 0; jj < len; jj++) hin[q][jj] = __LOAD__(hq[jj]);
            }
            for (int r = 0; r < 4 * H; r++) {
                const __CT__* wr = w + r * FH;
                const __CT__ br = bias[r], w0 = wr[0], w1 = F > 1 ? wr[1] : (__CT__)0;
                __CT__* restrict gr = gt[r];
                for (int jj = 0; jj < len; jj++) gr[jj] = br + w0 * x0[jj] + w1 * x1[jj];
                for (int q = 0; q < H; q++) {
                    const __CT__ wq = wr[F + q];
                    const __CT__* restrict hq = hin[q];
                    for (int jj = 0; jj < len; jj++) gr[jj] += wq * hq[jj];
                }
            }
            for (int jj = 0; jj < len; jj++) { y0[jj] = hb[0]; y1[jj] = hb[1]; }
            for (int q = 0; q < H; q++)
                __NAME___cell(len, gt[q], gt[H + q], gt[2 * H + q], gt[3 * H + q], c + q * n, h + q * n,
                              y0, y1, hw[q], hw[H + q]);
            __NAME___head(len, y0, y1, a, p, k);
        }
    }
}
"""

_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#define TILE %d
#define HMAX %d
static inline float lo_expf(float x) {
    /* exp(x) = 2^n exp(r) with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2
       split Cody-Waite style into a float-exact head and a tail), exp(r) by its Taylor series to
       r^7 (truncation < 2e-8 there). Inlined, so the loops vectorize without libmvec calls and
       their register spills; measured max relative error 3.0e-7 on [-87, 88]. Inputs are
       clamped to [-87, 88], where 2^n stays a normal float. */
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float e = 1.0f / 5040.0f;
    e = e * r + 1.0f / 720.0f;
    e = e * r + 1.0f / 120.0f;
    e = e * r + 1.0f / 24.0f;
    e = e * r + 1.0f / 6.0f;
    e = e * r + 0.5f;
    e = e * r + 1.0f;
    e = e * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return e * scale;
}
static inline float bf16_load(uint16_t b) { uint32_t u = ((uint32_t)b) << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t bf16_store(float f) {
    /* round to nearest even, as torch's fp32 -> bf16 conversion; NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
""" % (TILE, MAX_HIDDEN)

# name -> (compute type, state type, load, store, exp, sqrt)
_VARIANTS = {
    "lo_f32": ("float", "float", "", "", "lo_expf", "sqrtf"),
    "lo_f32_bf16": ("float", "uint16_t", "bf16_load", "bf16_store", "lo_expf", "sqrtf"),
    "lo_f64": ("double", "double", "", "", "exp", "sqrt"),
}


def _source() -> str:
    parts = [_PRELUDE]
    for name, (ct, st, load, store, exp, sqrt) in _VARIANTS.items():
        body = _BODY
        for token, value in (("__NAME__", name), ("__CT__", ct), ("__ST__", st), ("__LOAD__", load),
                             ("__STORE__", store), ("__EXP__", exp), ("__SQRT__", sqrt)):
            body = body.replace(token, value)
        parts.append(body)
    return "\n".join(parts)


# -ffast-math at compile time only: it lets GCC vectorize exp through libmvec. Linking without it
# keeps crtfastmath.o out of the library, which would otherwise switch the whole process to
# flush-denormals-to-zero when the library loads.
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-std=c11"]
_LDFLAGS = ["-shared", "-lm", "-lmvec"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed = False
_pool: ThreadPoolExecutor | None = None
_pool_size = [0]


def _forget_pool_in_child() -> None:
    # A forked child inherits the executor object but not its threads: work submitted to it
    # would never run. Start a fresh pool there instead.
    global _pool
    _pool = None
    _pool_size[0] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return ""


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH")
    src = _source()
    key = hashlib.sha256("\0".join([src, cc, *_CFLAGS, *_LDFLAGS, _cpu_id()]).encode()).hexdigest()[:20]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "learned_optim"
    lib_path = cache / f"lo_cpu_{key}.so"
    if not lib_path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            c_file, o_file, so_tmp = Path(tmp, "lo.c"), Path(tmp, "lo.o"), Path(tmp, "lo.so")
            c_file.write_text(src)
            subprocess.run([cc, *_CFLAGS, "-c", str(c_file), "-o", str(o_file)], check=True, capture_output=True)
            subprocess.run([cc, str(o_file), "-o", str(so_tmp), *_LDFLAGS], check=True, capture_output=True)
            os.replace(so_tmp, lib_path)  # atomic: concurrent builders never load a partial file
    lib = ctypes.CDLL(str(lib_path))
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for name in _VARIANTS:
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, cint, cint, cint, cint]
    return lib


def available() -> bool:
    """True when the compiled loop can be used (built on the first call; False if that fails)."""
    global _lib, _failed
    if os.environ.get("LEARNED_OPTIM_C_KERNEL", "1") == "0":
        return False
    if _lib is not None or _failed:
        return _lib is not None
    with _lock:
        if _lib is None and not _failed:
            try:
                _lib = _build()
            except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
                _failed = True
                detail = getattr(e, "stderr", b"") or b""
                warnings.warn(
                    f"learned_optim: the fused CPU loop could not be built ({e}; "
                    f"{detail.decode(errors='replace')[-300:]}); using the slower torch path. "
                    f"Install gcc, or set LEARNED_OPTIM_C_KERNEL=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _lib is not None


def supports(p, g, m, v, h, c, hidden_size: int) -> bool:
    """Whether the C loop handles this tensor's dtypes (all on CPU, contiguous views given)."""
    if hidden_size > MAX_HIDDEN or p.device.type != "cpu":
        return False
    if p.dtype == torch.float64:
        return all(t.dtype == torch.float64 for t in (g, m, v, h, c))
    return (p.dtype == g.dtype == m.dtype == v.dtype == torch.float32
            and h.dtype == c.dtype and h.dtype in (torch.float32, torch.bfloat16))


def run(ps, gs, ms, vs, hs, cs, ib1, sib2, *, rule, cdt) -> None:
    """The update for flat contiguous CPU tensors that ``supports`` accepted, in place.

    ``hs``/``cs`` are [H, n] views; ``ib1``/``sib2`` per-tensor bias corrections. Work is split
    into equal coordinate ranges for ``torch.get_num_threads()`` threads (ctypes releases the GIL).
    """
    global _pool
    cfg = rule.config
    groups: dict[torch.dtype, list[int]] = {}
    for i, h in enumerate(hs):
        groups.setdefault(h.dtype, []).append(i)
    w = _weights(rule, cdt)
    k = torch.tensor([cfg.beta1, cfg.beta2, cfg.eps, cfg.feature_clip, rule.lr, rule.decay,
                      cfg.log_scale_bound, cfg.direction_bound, 1 - cfg.beta1, 1 - cfg.beta2], dtype=cdt)
    kinds = [0 if f == "g_norm" else 1 for f in cfg.features] + [0]
    nthreads = max(1, torch.get_num_threads())
    for sdt, idx in groups.items():
        name = "lo_f64" if cdt == torch.float64 else ("lo_f32" if sdt == torch.float32 else "lo_f32_bf16")
        fn = getattr(_lib, name)
        lists = [[lst[i] for i in idx] for lst in (ps, gs, ms, vs, hs, cs)]
        ptrs = torch.tensor([[t.data_ptr() for t in lst] for lst in lists], dtype=torch.int64)
        numels = torch.tensor([t.numel() for t in lists[0]], dtype=torch.int64)
        coefs = torch.tensor([ib1[i] for i in idx] + [sib2[i] for i in idx], dtype=cdt)
        t_count = len(idx)
        task_lists = _split(numels.tolist(), nthreads)

        def call(tasks: torch.Tensor) -> None:
            fn(tasks.shape[0], tasks.data_ptr(), ptrs.data_ptr(), numels.data_ptr(), t_count, coefs.data_ptr(),
               w[0].data_ptr(), w[1].data_ptr(), w[2].data_ptr(), w[3].data_ptr(), k.data_ptr(),
               cfg.hidden_size, cfg.num_features, kinds[0], kinds[1], int(rule.maximize))

        if len(task_lists) == 1:
            call(task_lists[0])
        else:
            if _pool is None or _pool_size[0] < len(task_lists):
                _pool = ThreadPoolExecutor(max_workers=len(task_lists), thread_name_prefix="learned_optim")
                _pool_size[0] = len(task_lists)
            for f in [_pool.submit(call, t) for t in task_lists]:
                f.result()


def _split(numels: list[int], parts: int) -> list[torch.Tensor]:
    """Cut the concatenated coordinates into ``parts`` near-equal ranges of (tensor, begin, end)
    tasks, each range a multiple of TILE where possible."""
    total = sum(numels)
    # At least 64 tiles (8192 coordinates, ~0.1 ms of loop at the ~14 ns/coordinate measured on
    # one core) per thread: smaller steps are not worth a thread hand-off.
    parts = max(1, min(parts, -(-total // (64 * TILE))))
    per = -(-total // parts)
    per = -(-per // TILE) * TILE
    from ..update import _chunk_plan  # the same walk the torch path chunks with

    return [torch.tensor(t, dtype=torch.int64).reshape(-1, 3) for t in _chunk_plan(numels, per) if t]


def _weights(rule, cdt):
    # rule.weight/bias carry the torch path's 2x pre-scaling of the g-gate rows and the head;
    # the C loop uses the plain weights, so undo it (exact: multiplying by 2 and by 0.5 is).
    hs = rule.config.hidden_size
    weight = rule.weight.clone()
    bias = rule.bias[:, 0].clone()
    weight[2 * hs : 3 * hs] *= 0.5
    bias[2 * hs : 3 * hs] *= 0.5
    return (weight.contiguous(), bias.contiguous(), (rule.head_w * 0.5).contiguous(),
            (rule.head_b[:, 0] * 0.5).contiguous())
