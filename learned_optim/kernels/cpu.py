"""A fused CPU loop for the learned update, compiled at first use with the system C compiler.

The eager torch path (``update._batched_torch_update``) spends its time in ~30 passes over each
chunk, one torch op each (measured ~25-35 ms per step at 1e6 parameters on one core). This is the
same maths as one C loop over the coordinates: each coordinate's g, m, v, p, h, c are read once
and written once, and everything in between (features, 4H gates, cell, head) stays in registers.
Two versions of that loop:

* a portable one (``_BODY``), vectorized by GCC (``-O3 -march=native -ffast-math``; exp is an
  inlined polynomial in fp32 and fp64): the fp64 loop everywhere, and the fp32 loop on CPUs with
  neither AVX-512 nor AVX2+FMA;
* a hand-vectorized one for fp32 (``_SIMD_BODY``) over a small vector layer (``_SIMD``) with an
  AVX-512 (F, BW, VL) and an AVX2+FMA implementation, whichever ``-march=native`` has;
  ``LEARNED_OPTIM_C_SIMD=0`` switches it off.

At 1e6 parameters on this machine (AMD EPYC, Zen 4; one thread; ``benchmarks/profile_step.py``):
AVX-512 8.4 ms per step, portable 14.4 ms; built for AVX2 (``LEARNED_OPTIM_C_MARCH=x86-64-v3``,
which overrides ``-march``) 13.4 ms, portable 22.5 ms.

One library per network shape (hidden size H, feature count F): they are compile-time constants,
so the per-coordinate loops over hidden units unroll and the coordinate loop vectorizes.

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
import math
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["available", "simd_width", "supports", "run", "MAX_HIDDEN"]

# Threads get coordinate ranges in multiples of this many (whole cache lines, whole vectors).
SPLIT_QUANTUM = 128
# Largest hidden size the C loop handles: beyond it the unrolled gate loops (4H x (F+H) weights
# in registers or broadcast operands) stop paying off, and the torch path's matmul is the better
# tool.
MAX_HIDDEN = 16

_BODY = r"""
/* One pass over a task's coordinates; every value of a coordinate (g, m, v, p, its H hidden and
   H cell values, the 4H gates) lives in registers between its loads and its stores. H and F are
   compile-time constants (one build per network shape), so the loops over hidden units unroll
   and GCC vectorizes the loop over coordinates, F+H gate inputs in registers, each of the 4H
   (F+H) weights a broadcast operand.
   ivdep: the H rows of h and c are n apart (n >= the coordinates walked); GCC cannot see that
   they never overlap. */
void __NAME__(int64_t ntask, const int64_t* tasks, const int64_t* ptrs, const int64_t* numels, int64_t T,
          const __CT__* coefs, const __CT__* w, const __CT__* bias, const __CT__* hw, const __CT__* hb,
          const __CT__* k, int kind0, int kind1, int maximize) {
    const __CT__ sgn = maximize ? (__CT__)-1 : (__CT__)1;
    const __CT__ s0g = kind0 == 0, s1g = kind1 == 0, s0a = (__CT__)1 - s0g, s1a = (__CT__)1 - s1g;
    /* 1 - beta comes from the host in double precision: 1 - 0.999f in float is off by 1.3e-5 */
    const __CT__ b1 = k[0], b2 = k[1], eps = k[2], clip = k[3], lr = k[4], decay = k[5], scale = k[6],
        dirb = k[7], omb1 = k[8], omb2 = k[9];
    /* local copies: the compiler then knows no store through p/m/v/h/c changes them */
    __CT__ W[4 * HH][FF + HH], B[4 * HH], HW0[HH], HW1[HH];
    for (int r = 0; r < 4 * HH; r++) {
        B[r] = bias[r];
        for (int i = 0; i < FF + HH; i++) W[r][i] = w[r * (FF + HH) + i];
    }
    for (int q = 0; q < HH; q++) { HW0[q] = hw[q]; HW1[q] = hw[HH + q]; }
    const __CT__ hb0 = hb[0], hb1 = hb[1];
    for (int64_t t = 0; t < ntask; t++) {
        const int64_t tid = tasks[3 * t], begin = tasks[3 * t + 1], end = tasks[3 * t + 2];
        const int64_t n = numels[tid];
        const __CT__ ib1 = coefs[tid], sib2 = coefs[T + tid];
        __CT__* restrict p = (__CT__*)ptrs[tid];
        const __CT__* restrict g = (const __CT__*)ptrs[T + tid];
        __CT__* restrict m = (__CT__*)ptrs[2 * T + tid];
        __CT__* restrict v = (__CT__*)ptrs[3 * T + tid];
        __ST__* restrict h = (__ST__*)ptrs[4 * T + tid];
        __ST__* restrict c = (__ST__*)ptrs[5 * T + tid];
#pragma GCC ivdep
        for (int64_t j = begin; j < end; j++) {
            const __CT__ gv = sgn * g[j];
            const __CT__ mv = m[j] * b1 + gv * omb1;
            const __CT__ vv = v[j] * b2 + gv * gv * omb2;
            m[j] = mv;
            v[j] = vv;
            const __CT__ rd = (__CT__)1 / (__SQRT__(vv) * sib2 + eps);
            const __CT__ av = mv * ib1 * rd, gn = gv * rd;
            /* feature = sel_g * (g/d) + sel_a * a: arithmetic instead of a branch */
            __CT__ x[FF + HH];
            const __CT__ f0 = s0g * gn + s0a * av;
            x[0] = f0 < -clip ? -clip : (f0 > clip ? clip : f0);
            if (FF > 1) {
                const __CT__ f1 = s1g * gn + s1a * av;
                x[FF - 1] = f1 < -clip ? -clip : (f1 > clip ? clip : f1);
            }
#pragma GCC unroll 16
            for (int q = 0; q < HH; q++) x[FF + q] = __LOAD__(h[q * n + j]);
            __CT__ y0 = hb0, y1 = hb1;
#pragma GCC unroll 16
            for (int q = 0; q < HH; q++) {
                __CT__ z[4];
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    const int row = r * HH + q;
                    __CT__ s = B[row];
#pragma GCC unroll 24
                    for (int i = 0; i < FF + HH; i++) s += W[row][i] * x[i];
                    z[r] = s;
                }
                const __CT__ ig = (__CT__)1 / ((__CT__)1 + __EXP__(-z[0]));
                const __CT__ fg = (__CT__)1 / ((__CT__)1 + __EXP__(-z[1]));
                const __CT__ cg = (__CT__)2 / ((__CT__)1 + __EXP__((__CT__)-2 * z[2])) - (__CT__)1;
                const __CT__ og = (__CT__)1 / ((__CT__)1 + __EXP__(-z[3]));
                const __CT__ cn = fg * __LOAD__(c[q * n + j]) + ig * cg;
                const __CT__ hv = og * ((__CT__)2 / ((__CT__)1 + __EXP__((__CT__)-2 * cn)) - (__CT__)1);
                c[q * n + j] = __STORE__(cn);
                h[q * n + j] = __STORE__(hv);
                y0 += HW0[q] * hv;
                y1 += HW1[q] * hv;
            }
            const __CT__ t0 = (__CT__)2 / ((__CT__)1 + __EXP__((__CT__)-2 * y0)) - (__CT__)1;
            const __CT__ t1 = (__CT__)2 / ((__CT__)1 + __EXP__((__CT__)-2 * y1)) - (__CT__)1;
            const __CT__ u = av * __EXP__(scale * t0) + dirb * t1;
            p[j] = p[j] * decay - lr * u;
        }
    }
}
"""

def _exp_source(name: str, ct: str, it: str, lo: float, hi: float, ln2_hi: str, ln2_lo: str, degree: int,
                mant_bits: int, bias: int) -> str:
    """An inline C exp for the portable loop: exp(x) = 2^n exp(r), n = round(x / ln 2),
    r = x - n ln 2 in [-ln2/2, ln2/2] with ln 2 split Cody-Waite style into a head (n * head exact)
    and a tail, exp(r) by its Taylor series to r^degree, 2^n built in the exponent bits. Inputs
    are clamped to [lo, hi], where 2^n stays a normal number. Inline (no libm/libmvec call), so
    GCC vectorizes the loops without -ffinite-math-only (see _CFLAGS)."""
    suffix = "f" if ct == "float" else ""
    horner = "\n".join(f"    e = e * r + (({ct})1 / ({ct}){math.factorial(k)});" for k in range(degree - 1, -1, -1))
    return f"""static inline {ct} {name}({ct} x) {{
    x = x < {lo!r}{suffix} ? {lo!r}{suffix} : (x > {hi!r}{suffix} ? {hi!r}{suffix} : x);
    {ct} n = rint{suffix}(x * 1.44269504088896341{suffix});
    {ct} r = x - n * {ln2_hi}{suffix};
    r = r - n * {ln2_lo}{suffix};
    {ct} e = ({ct})1 / ({ct}){math.factorial(degree)};
{horner}
    {it} bits = (({it})n + {bias}) << {mant_bits};
    {ct} scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}}
"""


# fp32: head 0.693145751953125 has 16 significant bits; truncation of the r^7 series < 2e-8,
# measured max relative error 3.0e-7 on [-87, 88]. fp64: fdlibm's ln2_hi (32 significant bits,
# n * head exact for |n| <= 1023) and ln2_lo; truncation of the r^12 series < 2e-17.
_EXPS = (_exp_source("lo_expf", "float", "int32_t", -87.0, 88.0, "0.693145751953125", "1.428606765330187045e-06",
                     7, 23, 127)
         + _exp_source("lo_exp", "double", "int64_t", -708.0, 709.0, "0.6931471803691238", "1.9082149292705877e-10",
                       12, 52, 1023))

_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
__EXPS__static inline float bf16_load(uint16_t b) { uint32_t u = ((uint32_t)b) << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t bf16_store(float f) {
    /* round to nearest even, as torch's fp32 -> bf16 conversion; NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
""".replace("__EXPS__", _EXPS)

# The vector layer's plain arithmetic, the same for both ISAs but for the intrinsics' prefix.
def _vector_ops(prefix: str) -> str:
    ops = [f"static inline V v_{op}(V a, V b) {{ return {prefix}_{op}_ps(a, b); }}"
           for op in ("add", "sub", "mul", "div", "min", "max")]
    ops.append(f"static inline V v_sqrt(V a) {{ return {prefix}_sqrt_ps(a); }}")
    ops += [f"static inline V v_{op}(V a, V b, V c) {{ return {prefix}_{op}_ps(a, b, c); }}"
            for op in ("fmadd", "fmsub", "fnmadd")]
    return "\n".join(ops) + "\n"


_SIMD = r"""
/* The fp32 loop again, hand-vectorized: the vector layer below has an AVX-512 (F, BW, VL: the
   last two for the bf16 state's loads and stores) and an AVX2+FMA implementation; where
   -march=native has neither, the portable loop above runs. Why a second copy of the maths:
   the step is ~25 vector
   instructions per coordinate, most of them in the 23 exps (5 per hidden unit, 3 in the head),
   so the cost of each exp decides the speed. Here:
     - exp(z) is 2^(z log2 e), with log2 e, the sign and the 2 of sigmoid(z) = 1/(1+exp(-z)) and
       tanh(z) = 2/(1+exp(-2z)) - 1 folded into the gate and head weights on entry: each exp is
       then a round, a subtraction, a degree-5 polynomial and 2^n (one vscalefps on AVX-512);
     - 1/x is vrcp14ps and one Newton step on AVX-512 (relative error ~2^-28 before rounding),
       a division on AVX2;
     - every statement is done for U independent vectors side by side (the unrolled u loops),
       so the long dependent chain of one vector (moments -> gates -> exps -> cell -> head)
       overlaps with the next one's.
   Measured on 20k coordinates in cache (AMD EPYC, Zen 4): portable loop 10.8 ns/coordinate;
   this one on AVX-512 with U = 1 and base-e exps 9.0, U = 3 with them 8.3, U = 3 as below 7.5.
   Built for AVX2 on the same CPU: portable 21.3, this one 11.7 (U = 3; U = 2: 12.7).
   Accuracy: ~1 ulp per nonlinearity (the portable loop's ~0.5); tests check both against the
   fp64 reference and these approximations directly.
   The moments keep an exact sqrt and division (the zero-head Adam test holds to 1e-6).
   Tails use masked loads/stores: masked-off lanes compute on zeros, which are finite. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define LO_SIMD 512
#define U 3 /* vectors side by side: 2 -> 7.7, 3 -> 7.5, 4 -> 7.6 ns/coordinate here */
#define VL 16
typedef __m512 V;
typedef __mmask16 M;
#define SET1 _mm512_set1_ps
__OPS_mm512__
static inline V v_round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* e * 2^n for integral n in [-125, 126]: one vscalefps */
static inline V v_ldexp(V e, V n) { return _mm512_scalef_ps(e, n); }
/* 1 / d: vrcp14ps and one Newton step (relative error ~2^-28 before rounding) */
static inline V v_recip(V d) {
    V r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, SET1(1.0f)), r);
}
/* lanes [0, left) of a vector */
static inline M lo_mask(int64_t left) {
    return left >= VL ? (M)0xffff : (left <= 0 ? (M)0 : (M)((1u << left) - 1));
}
static inline V ld_f32(const float* ptr, M k) { return _mm512_maskz_loadu_ps(k, ptr); }
static inline void st_f32(float* ptr, M k, V x) { _mm512_mask_storeu_ps(ptr, k, x); }
static inline V ld_bf16(const uint16_t* ptr, M k) {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, ptr));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
static inline void st_bf16(uint16_t* ptr, M k, V x) {
#if defined(__AVX512BF16__)
    /* one instruction: rounds to nearest even like bf16_store (it also flushes fp32 denormals,
       below 1.2e-38, to zero); 11.2 -> 9.1 ns/coordinate with bf16 state here */
    _mm256_mask_storeu_epi16(ptr, k, (__m256i)_mm512_cvtneps_pbh(x));
#else
    /* round to nearest even as bf16_store; NaN stays NaN */
    __m512i u = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    _mm256_mask_storeu_epi16(ptr, k, _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet)));
#endif
}
#elif defined(__AVX2__) && defined(__FMA__)
/* The same loop on 8-lane AVX2 vectors (no AVX-512: most client CPUs). No vscalefps, vrcp14ps
   or 16-bit masked memory ops there: 2^n is built in the exponent bits, 1/d is a division, and
   the bf16 state's tails go through a small buffer. */
#include <immintrin.h>
#define LO_SIMD 256
#define U 3
#define VL 8
typedef __m256 V;
typedef __m256i M;
#define SET1 _mm256_set1_ps
__OPS_mm256__
static inline V v_round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline V v_ldexp(V e, V n) {
    /* n integral in [-125, 126]: (n + 127) << 23 is 2^n; a NaN n gives garbage bits, but e is
       then NaN too, and so is the product */
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
}
static inline V v_recip(V d) { return _mm256_div_ps(SET1(1.0f), d); }
static inline M lo_mask(int64_t left) {
    const int l = left >= VL ? VL : (left <= 0 ? 0 : (int)left);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(l), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* masked moves only for tails: vmaskmovps stores are microcoded and slow on AMD CPUs */
static inline int full(M k) { return _mm256_movemask_ps(_mm256_castsi256_ps(k)) == 0xff; }
static inline V ld_f32(const float* ptr, M k) { return full(k) ? _mm256_loadu_ps(ptr) : _mm256_maskload_ps(ptr, k); }
static inline void st_f32(float* ptr, M k, V x) {
    if (full(k)) _mm256_storeu_ps(ptr, x);
    else _mm256_maskstore_ps(ptr, k, x);
}
static inline V ld_bf16(const uint16_t* ptr, M k) {
    const int bits = _mm256_movemask_ps(_mm256_castsi256_ps(k));
    uint16_t buf[VL] = {0};
    if (bits == 0xff) memcpy(buf, ptr, sizeof buf);
    else for (int i = 0; i < VL; i++) if ((bits >> i) & 1) buf[i] = ptr[i];
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)buf));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
static inline void st_bf16(uint16_t* ptr, M k, V x) {
    /* round to nearest even as bf16_store; NaN stays NaN */
    __m256i u = _mm256_castps_si256(x);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
    /* 8 x 32 -> 8 x 16 bits: packus works per 128-bit half; the permute puts the halves in order */
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
    uint16_t buf[VL];
    _mm_storeu_si128((__m128i*)buf, _mm256_castsi256_si128(packed));
    const int bits = _mm256_movemask_ps(_mm256_castsi256_ps(k));
    if (bits == 0xff) memcpy(ptr, buf, sizeof buf);
    else for (int i = 0; i < VL; i++) if ((bits >> i) & 1) ptr[i] = buf[i];
}
#endif

#if defined(LO_SIMD)
int lo_simd(void) { return LO_SIMD; }
static inline V v_exp2(V x) {
    /* 2^x = 2^n 2^f, n = round(x), f = x - n in [-1/2, 1/2] (exact). Clamped to [-125, 126] so
       the result stays a normal float and 1 + 2^x finite (as lo_expf's [-87, 88] in base e). */
    /* operand order: maxps/minps return the second operand when one is NaN, so NaN stays NaN */
    x = v_min(SET1(126.0f), v_max(SET1(-125.0f), x));
    const V n = v_round(x);
    const V f = v_sub(x, n);
    /* degree-5 polynomial fitted to 2^f on [-1/2, 1/2] for relative error, constant term fixed
       at 1 so that 2^0 = 1 exactly (then sigmoid(0) = 1/2 and tanh(0) = 0 exactly, and a zero
       head gives Adam's step). 9.2e-8 in exact arithmetic, 1.5e-7 evaluated in fp32. */
    V e = v_fmadd(SET1(0.001326470635831356f), f, SET1(0.009671509265899658f));
    e = v_fmadd(e, f, SET1(0.05550733581185341f));
    e = v_fmadd(e, f, SET1(0.24022242426872253f));
    e = v_fmadd(e, f, SET1(0.6931470036506653f));
    e = v_fmadd(e, f, SET1(1.0f));
    return v_ldexp(e, n);
}
/* 1 / (1 + x) for x >= 0 (x = an exp, at most exp(88): the sum stays finite) */
static inline V v_rcp1p(V x) { return v_recip(v_add(x, SET1(1.0f))); }
/* the two approximations over arrays, for the tests (their accuracy is checked directly) */
void lo_simd_exp2(int64_t len, const float* x, float* y) {
    for (int64_t j = 0; j < len; j += VL) st_f32(y + j, lo_mask(len - j), v_exp2(ld_f32(x + j, lo_mask(len - j))));
}
void lo_simd_rcp1p(int64_t len, const float* x, float* y) {
    for (int64_t j = 0; j < len; j += VL) st_f32(y + j, lo_mask(len - j), v_rcp1p(ld_f32(x + j, lo_mask(len - j))));
}
#else
int lo_simd(void) { return 0; }
#endif
""".replace("__OPS_mm512__", _vector_ops("_mm512")).replace("__OPS_mm256__", _vector_ops("_mm256"))

_SIMD_BODY = r"""
#if defined(LO_SIMD)
void __NAME__(int64_t ntask, const int64_t* tasks, const int64_t* ptrs, const int64_t* numels, int64_t T,
          const float* coefs, const float* w, const float* bias, const float* hw, const float* hb,
          const float* k, int kind0, int kind1, int maximize) {
    const V sgn = SET1(maximize ? -1.0f : 1.0f);
    const V s0g = SET1(kind0 == 0), s1g = SET1(kind1 == 0);
    const V s0a = SET1(kind0 != 0), s1a = SET1(kind1 != 0);
    const V b1 = SET1(k[0]), b2 = SET1(k[1]), eps = SET1(k[2]), clip = SET1(k[3]), nclip = SET1(-k[3]),
        lr = SET1(k[4]), decay = SET1(k[5]), dirb = SET1(k[7]), omb1 = SET1(k[8]), omb2 = SET1(k[9]),
        one = SET1(1.0f), two = SET1(2.0f);
    /* gate rows pre-scaled so that z' = -z log2 e (i, f, o) and z' = -2z log2 e (g): 2^z' is the
       exp(-z) or exp(-2z) the sigmoid and tanh need; the head's by -2 log2 e for its two tanh */
    const float l2e = 1.44269504088896341f;
    const V ctanh = SET1(-2.0f * l2e), escale = SET1(k[6] * l2e);
    V W[4 * HH][FF + HH], B[4 * HH], HW0[HH], HW1[HH];
    for (int r = 0; r < 4 * HH; r++) {
        const float sc = (r >= 2 * HH && r < 3 * HH) ? -2.0f * l2e : -l2e;
        B[r] = SET1(sc * bias[r]);
        for (int i = 0; i < FF + HH; i++) W[r][i] = SET1(sc * w[r * (FF + HH) + i]);
    }
    for (int q = 0; q < HH; q++) { HW0[q] = SET1(-2.0f * l2e * hw[q]); HW1[q] = SET1(-2.0f * l2e * hw[HH + q]); }
    const V hb0 = SET1(-2.0f * l2e * hb[0]), hb1 = SET1(-2.0f * l2e * hb[1]);
    for (int64_t t = 0; t < ntask; t++) {
        const int64_t tid = tasks[3 * t], begin = tasks[3 * t + 1], end = tasks[3 * t + 2];
        const int64_t n = numels[tid];
        const V ib1 = SET1(coefs[tid]), sib2 = SET1(coefs[T + tid]);
        float* p = (float*)ptrs[tid];
        const float* g = (const float*)ptrs[T + tid];
        float* m = (float*)ptrs[2 * T + tid];
        float* v = (float*)ptrs[3 * T + tid];
        __ST__* h = (__ST__*)ptrs[4 * T + tid];
        __ST__* c = (__ST__*)ptrs[5 * T + tid];
        for (int64_t j0 = begin; j0 < end; j0 += U * VL) {
            M km[U];
            V x[U][FF + HH], av[U], y0[U], y1[U];
            #pragma GCC unroll 32
            for (int u = 0; u < U; u++) {
                const int64_t left = end - j0 - u * VL;
                km[u] = lo_mask(left);
            }
            #pragma GCC unroll 32
            for (int u = 0; u < U; u++) {
                const int64_t j = j0 + u * VL;
                const V gv = v_mul(sgn, ld_f32(g + j, km[u]));
                const V mv = v_fmadd(ld_f32(m + j, km[u]), b1, v_mul(gv, omb1));
                const V vv = v_fmadd(ld_f32(v + j, km[u]), b2, v_mul(v_mul(gv, gv), omb2));
                st_f32(m + j, km[u], mv);
                st_f32(v + j, km[u], vv);
                const V rd = v_div(one, v_fmadd(v_sqrt(vv), sib2, eps));
                const V a = v_mul(v_mul(mv, ib1), rd), gn = v_mul(gv, rd);
                av[u] = a;
                const V f0 = v_fmadd(s0g, gn, v_mul(s0a, a));
                x[u][0] = v_min(clip, v_max(nclip, f0)); /* NaN stays NaN, as torch.clamp */
                if (FF > 1) {
                    const V f1 = v_fmadd(s1g, gn, v_mul(s1a, a));
                    x[u][FF - 1] = v_min(clip, v_max(nclip, f1));
                }
                #pragma GCC unroll 32
                for (int q = 0; q < HH; q++) x[u][FF + q] = __LDS__(h + q * n + j, km[u]);
                y0[u] = hb0;
                y1[u] = hb1;
            }
            #pragma GCC unroll 32
            for (int q = 0; q < HH; q++) {
                V z[4][U];
                #pragma GCC unroll 32
                for (int r = 0; r < 4; r++) {
                    const int row = r * HH + q;
                    #pragma GCC unroll 32
                    for (int u = 0; u < U; u++) z[r][u] = B[row];
                    #pragma GCC unroll 32
                    for (int i = 0; i < FF + HH; i++)
                        #pragma GCC unroll 32
                        for (int u = 0; u < U; u++) z[r][u] = v_fmadd(W[row][i], x[u][i], z[r][u]);
                }
                #pragma GCC unroll 32
                for (int u = 0; u < U; u++) {
                    const int64_t j = j0 + u * VL;
                    const V ig = v_rcp1p(v_exp2(z[0][u]));
                    const V fg = v_rcp1p(v_exp2(z[1][u]));
                    const V cg = v_fmsub(two, v_rcp1p(v_exp2(z[2][u])), one);
                    const V og = v_rcp1p(v_exp2(z[3][u]));
                    const V cn = v_fmadd(fg, __LDS__(c + q * n + j, km[u]), v_mul(ig, cg));
                    const V th = v_fmsub(two, v_rcp1p(v_exp2(v_mul(ctanh, cn))), one);
                    const V hv = v_mul(og, th);
                    __STS__(c + q * n + j, km[u], cn);
                    __STS__(h + q * n + j, km[u], hv);
                    y0[u] = v_fmadd(HW0[q], hv, y0[u]);
                    y1[u] = v_fmadd(HW1[q], hv, y1[u]);
                }
            }
            #pragma GCC unroll 32
            for (int u = 0; u < U; u++) {
                const int64_t j = j0 + u * VL;
                const V t0 = v_fmsub(two, v_rcp1p(v_exp2(y0[u])), one);
                const V t1 = v_fmsub(two, v_rcp1p(v_exp2(y1[u])), one);
                const V step = v_fmadd(av[u], v_exp2(v_mul(escale, t0)), v_mul(dirb, t1));
                st_f32(p + j, km[u], v_fnmadd(lr, step, v_mul(ld_f32(p + j, km[u]), decay)));
            }
        }
    }
}
#endif
"""

# name -> state type, its masked vector load and store
_SIMD_VARIANTS = {
    "lo_f32_simd": ("float", "ld_f32", "st_f32"),
    "lo_f32_bf16_simd": ("uint16_t", "ld_bf16", "st_bf16"),
}

# name -> (compute type, state type, load, store, exp, sqrt)
_VARIANTS = {
    "lo_f32": ("float", "float", "", "", "lo_expf", "sqrtf"),
    "lo_f32_bf16": ("float", "uint16_t", "bf16_load", "bf16_store", "lo_expf", "sqrtf"),
    "lo_f64": ("double", "double", "", "", "lo_exp", "sqrt"),
}


def _source(hidden_size: int, num_features: int) -> str:
    parts = [_PRELUDE, f"#define HH {int(hidden_size)}\n#define FF {int(num_features)}\n"]
    for name, (ct, st, load, store, exp, sqrt) in _VARIANTS.items():
        body = _BODY
        for token, value in (("__NAME__", name), ("__CT__", ct), ("__ST__", st), ("__LOAD__", load),
                             ("__STORE__", store), ("__EXP__", exp), ("__SQRT__", sqrt)):
            body = body.replace(token, value)
        parts.append(body)
    parts.append(_SIMD)
    for name, (st, load, store) in _SIMD_VARIANTS.items():
        body = _SIMD_BODY
        for token, value in (("__NAME__", name), ("__ST__", st), ("__LDS__", load), ("__STS__", store)):
            body = body.replace(token, value)
        parts.append(body)
    return "\n".join(parts)


# -ffast-math lets GCC vectorize the portable loop (its clamps become min/max, products contract
# to FMAs); -fno-finite-math-only keeps NaN semantics, so a NaN in the state stays NaN as in the
# torch paths (tested). Every exp is inline (lo_expf, lo_exp, v_exp2): no libmvec. Linking
# without -ffast-math keeps crtfastmath.o out of the library, which would otherwise switch the
# whole process to flush-denormals-to-zero when the library loads.
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fPIC", "-std=c11"]


def _cflags() -> list[str]:
    """_CFLAGS, with -march from LEARNED_OPTIM_C_MARCH if set (read at each build): e.g.
    ``x86-64-v3`` builds the AVX2 loop on an AVX-512 machine (the tests do), or a baseline
    for a cluster whose nodes differ from the build host."""
    march = os.environ.get("LEARNED_OPTIM_C_MARCH", "").strip()
    return [f"-march={march}" if (f.startswith("-march=") and march) else f for f in _CFLAGS]
_LDFLAGS = ["-shared", "-lm"]

_lock = threading.Lock()
_libs: dict[tuple[int, int], ctypes.CDLL] = {}  # (hidden size, feature count) -> library
_failed = False  # a build failed once (no compiler, ...): stop trying, warn once
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


def _build(hidden_size: int, num_features: int) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH")
    src = _source(hidden_size, num_features)
    cflags = _cflags()
    key = hashlib.sha256("\0".join([src, cc, *cflags, *_LDFLAGS, _cpu_id()]).encode()).hexdigest()[:20]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "learned_optim"
    lib_path = cache / f"lo_cpu_h{hidden_size}_f{num_features}_{key}.so"
    if not lib_path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            c_file, o_file, so_tmp = Path(tmp, "lo.c"), Path(tmp, "lo.o"), Path(tmp, "lo.so")
            c_file.write_text(src)
            subprocess.run([cc, *cflags, "-c", str(c_file), "-o", str(o_file)], check=True, capture_output=True)
            subprocess.run([cc, str(o_file), "-o", str(so_tmp), *_LDFLAGS], check=True, capture_output=True)
            os.replace(so_tmp, lib_path)  # atomic: concurrent builders never load a partial file
    lib = ctypes.CDLL(str(lib_path))
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for name in _VARIANTS:
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, cint, cint]
    lib.lo_simd.restype = ctypes.c_int
    lib.lo_simd.argtypes = []
    if lib.lo_simd():
        for name in _SIMD_VARIANTS:
            fn = getattr(lib, name)
            fn.restype = None
            fn.argtypes = [i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, cint, cint]
        for name in ("lo_simd_exp2", "lo_simd_rcp1p"):
            getattr(lib, name).restype = None
            getattr(lib, name).argtypes = [i64, ptr, ptr]
    return lib


def available(hidden_size: int = 4, num_features: int = 2) -> bool:
    """True when the compiled loop for this network shape can be used (built on the first call
    for the shape; False if a build fails, and no further builds are tried)."""
    global _failed
    if os.environ.get("LEARNED_OPTIM_C_KERNEL", "1") == "0":
        return False
    shape = (int(hidden_size), int(num_features))
    if shape in _libs or _failed:
        return shape in _libs
    with _lock:
        if shape not in _libs and not _failed:
            try:
                _libs[shape] = _build(*shape)
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
    return shape in _libs


def simd_width(hidden_size: int = 4, num_features: int = 2) -> int:
    """Vector width in bits of the hand-vectorized fp32 loop built for this network shape (512
    for AVX-512, 256 for AVX2), or 0 when only the portable loop or no C loop exists here."""
    if not available(hidden_size, num_features):
        return 0
    return int(_libs[(int(hidden_size), int(num_features))].lo_simd())


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
    lib = _libs[(cfg.hidden_size, cfg.num_features)]
    groups: dict[torch.dtype, list[int]] = {}
    for i, h in enumerate(hs):
        groups.setdefault(h.dtype, []).append(i)
    w = _weights(rule, cdt)
    k = torch.tensor([cfg.beta1, cfg.beta2, cfg.eps, cfg.feature_clip, rule.lr, rule.decay,
                      cfg.log_scale_bound, cfg.direction_bound, 1 - cfg.beta1, 1 - cfg.beta2], dtype=cdt)
    kinds = [0 if f == "g_norm" else 1 for f in cfg.features] + [0]
    # LEARNED_OPTIM_C_SIMD=0 runs the portable loop even where the AVX-512 one was built (tests
    # compare the two; also a switch if a CPU misbehaves with it)
    simd = bool(lib.lo_simd()) and os.environ.get("LEARNED_OPTIM_C_SIMD", "1") != "0"
    nthreads = max(1, torch.get_num_threads())
    for sdt, idx in groups.items():
        name = "lo_f64" if cdt == torch.float64 else ("lo_f32" if sdt == torch.float32 else "lo_f32_bf16")
        if cdt == torch.float32 and simd:
            name += "_simd"
        fn = getattr(lib, name)
        lists = [[lst[i] for i in idx] for lst in (ps, gs, ms, vs, hs, cs)]
        ptrs = torch.tensor([[t.data_ptr() for t in lst] for lst in lists], dtype=torch.int64)
        numels = torch.tensor([t.numel() for t in lists[0]], dtype=torch.int64)
        coefs = torch.tensor([ib1[i] for i in idx] + [sib2[i] for i in idx], dtype=cdt)
        t_count = len(idx)
        task_lists = _split(numels.tolist(), nthreads)

        def call(tasks: torch.Tensor) -> None:
            fn(tasks.shape[0], tasks.data_ptr(), ptrs.data_ptr(), numels.data_ptr(), t_count, coefs.data_ptr(),
               w[0].data_ptr(), w[1].data_ptr(), w[2].data_ptr(), w[3].data_ptr(), k.data_ptr(),
               kinds[0], kinds[1], int(rule.maximize))

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
    tasks, each range a multiple of SPLIT_QUANTUM where possible."""
    total = sum(numels)
    # At least 8192 coordinates (~0.1 ms of loop at the ~10 ns/coordinate measured on one core)
    # per thread: smaller steps are not worth a thread hand-off.
    parts = max(1, min(parts, -(-total // (64 * SPLIT_QUANTUM))))
    per = -(-total // parts)
    per = -(-per // SPLIT_QUANTUM) * SPLIT_QUANTUM
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
