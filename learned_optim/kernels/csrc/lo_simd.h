/* The fp32 loop again, hand-vectorized: the vector layer below has an AVX-512 (F, BW, VL: the
   last two for the bf16 state's loads and stores) and an AVX2+FMA implementation; where
   -march=native has neither, the portable loop above runs. Why a second copy of the maths:
   the step is ~25 vector
   instructions per coordinate, most of them in the 23 exps (5 per hidden unit, 3 in the head),
   so the cost of each exp decides the speed. Here:
     - exp(z) is 2^(z log2 e), with log2 e, the sign and the 2 of sigmoid(z) = 1/(1+exp(-z)) and
       tanh(z) = 2/(1+exp(-2z)) - 1 folded into the gate and head weights on entry: each exp is
       then a rounding to an integer n, a subtraction, a degree-5 polynomial and 2^n (one
       vscalefps on AVX-512; on AVX2 the rounding is an addition whose low bits give 2^n by a
       shift: lo_avx2.h);
     - 1/x is vrcp14ps and one Newton step on AVX-512 (relative error ~2^-28 before rounding),
       a division on AVX2;
     - every statement is done for U independent vectors side by side (the unrolled u loops),
       so the long dependent chain of one vector (moments -> gates -> exps -> cell -> head)
       overlaps with the next one's; on AVX2 (U = 1) the overlap comes instead from blocks of
       UB vectors taken through short passes, their values waiting in L1 between passes
       (lo_simd_loop.h, lo_avx2.h).
   Measured on 20k coordinates in cache (AMD EPYC, Zen 4): portable loop 10.8 ns/coordinate;
   this one on AVX-512 with U = 1 and base-e exps 9.0, U = 3 with them 8.3, U = 3 as below 7.5.
   Built for AVX2 on the same CPU: portable 21.3, this one 11.7 (U = 3; U = 2: 12.7); on a CPU
   whose native build is AVX2 (Zen 2) U = 2 is the faster, so the AVX2 build uses it (lo_avx2.h).
   Accuracy: ~1 ulp per nonlinearity (the portable loop's ~0.5); tests check both against the
   fp64 reference and these approximations directly.
   The moments keep an exact sqrt and division (the zero-head Adam test holds to 1e-6).
   Tails use masked loads/stores: masked-off lanes compute on zeros, which are finite. */
#ifndef LO_SIMD_H
#define LO_SIMD_H

/* The vector layer's plain arithmetic: the same for both ISAs but for the intrinsics' prefix P
   (_mm512 or _mm256), token-pasted. */
#define LO_VECTOR_OPS(P) \
    static inline V v_add(V a, V b) { return P##_add_ps(a, b); } \
    static inline V v_sub(V a, V b) { return P##_sub_ps(a, b); } \
    static inline V v_mul(V a, V b) { return P##_mul_ps(a, b); } \
    static inline V v_div(V a, V b) { return P##_div_ps(a, b); } \
    static inline V v_min(V a, V b) { return P##_min_ps(a, b); } \
    static inline V v_max(V a, V b) { return P##_max_ps(a, b); } \
    static inline V v_sqrt(V a) { return P##_sqrt_ps(a); } \
    static inline V v_fmadd(V a, V b, V c) { return P##_fmadd_ps(a, b, c); } \
    static inline V v_fmsub(V a, V b, V c) { return P##_fmsub_ps(a, b, c); } \
    static inline V v_fnmadd(V a, V b, V c) { return P##_fnmadd_ps(a, b, c); }

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include "lo_avx512.h"
#elif defined(__AVX2__) && defined(__FMA__)
#include "lo_avx2.h"
#endif

#if defined(LO_SIMD)
int lo_simd(void) { return LO_SIMD; }
/* 2^x for x in [-125, 126] (or NaN): v_exp2 without its clamp, for inputs bounded by the
   weights (lo_inputs_bounded) */
static inline V v_exp2_in_range(V x) {
    /* 2^x = 2^n 2^f, n = round(x), f = x - n in [-1/2, 1/2] (exact) */
    V f;
    const V k = v_exp2_split(x, &f); /* n, or what the ISA's v_exp2_join needs of it */
    /* degree-5 polynomial fitted to 2^f on [-1/2, 1/2] for relative error, constant term fixed
       at 1 so that 2^0 = 1 exactly (then sigmoid(0) = 1/2 and tanh(0) = 0 exactly, and a zero
       head gives Adam's step). 9.2e-8 in exact arithmetic, 1.5e-7 evaluated in fp32. Times
       LO_EXP2_SCALE, a power of 2 the ISA's join undoes exactly. */
    const float s = LO_EXP2_SCALE;
    V e = v_fmadd(SET1(s * 0.001326470635831356f), f, SET1(s * 0.009671509265899658f));
    e = v_fmadd(e, f, SET1(s * 0.05550733581185341f));
    e = v_fmadd(e, f, SET1(s * 0.24022242426872253f));
    e = v_fmadd(e, f, SET1(s * 0.6931470036506653f));
    e = v_fmadd(e, f, SET1(s * 1.0f));
    return v_exp2_join(e, k);
}
static inline V v_exp2(V x) {
    /* Clamped to [-125, 126] so the result stays a normal float and 1 + 2^x finite (as
       lo_expf's [-87, 88] in base e). Operand order: maxps/minps return the second operand when
       one is NaN, so NaN stays NaN, and an x in range passes bit for bit. */
    return v_exp2_in_range(v_min(SET1(126.0f), v_max(SET1(-125.0f), x)));
}
/* 1 / (1 + x) for x >= 0 (x = an exp, at most exp(88): the sum stays finite) */
static inline V v_rcp1p(V x) { return v_recip(v_add(x, SET1(1.0f))); }
/* Whether the inputs of every exp in the gates and the head lie inside v_exp2's range for any
   coordinate, from the weights alone: features are clipped to +-clip and |h| <= 1 (h = o tanh(c),
   which the loop clamps to that on load: a no-op for any state a learned step wrote), so a gate's
   input, scaled to base 2 as the loop does, is at most sc (|b| + clip sum|w_features| + sum|w_h|)
   in size, for every bias row (the rule's, or each tensor's: bias_rows of them); the head's
   likewise, and the step size's log_scale_bound log2 e. Then the loop's clamps before those exps
   change no bit and are left out (the cell's tanh keeps its clamp: c is unbounded). The limit is
   below the clamp's 125 by far more than the fp32 rounding of the sums. NaN weights give 0. */
#define LO_IN_RANGE 120.0
int lo_inputs_bounded(const float* w, const float* bias, const float* hw, const float* hb, int64_t bias_rows,
                      double clip, double log_scale_bound) {
    const double l2e = 1.44269504088896341;
    int ok = fabs(log_scale_bound) * l2e <= LO_IN_RANGE;
    for (int r = 0; r < 4 * HIDDEN; r++) {
        const double sc = (r >= 2 * HIDDEN && r < 3 * HIDDEN) ? 2.0 * l2e : l2e; /* tanh(g) is an exp of 2z */
        double s = 0.0;
        for (int i = 0; i < FEATURES + HIDDEN; i++) s += fabs((double)w[r * (FEATURES + HIDDEN) + i]) * (i < FEATURES ? clip : 1.0);
        for (int64_t t = 0; t < bias_rows; t++) ok &= sc * (s + fabs((double)bias[t * 4 * HIDDEN + r])) <= LO_IN_RANGE;
    }
    for (int o = 0; o < 2; o++) {
        double s = 0.0;
        for (int q = 0; q < HIDDEN; q++) s += fabs((double)hw[o * HIDDEN + q]);
        for (int64_t t = 0; t < bias_rows; t++) ok &= 2.0 * l2e * (s + fabs((double)hb[2 * t + o])) <= LO_IN_RANGE;
    }
    return ok;
}
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

#endif
