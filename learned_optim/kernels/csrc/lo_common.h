/* Shared by every loop of the fused CPU update (lo.c): the rule's constants as passed from
   Python (learned_optim/kernels/cpu.py declares the same struct with ctypes), the inline exps of
   the portable loop, and the bf16 load/store of the LSTM state. */
#ifndef LO_COMMON_H
#define LO_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The rule's constants, in double as Python has them; each loop converts them to its compute
   type once on entry (the same rounding as building a float tensor from them). 1 - beta is
   computed on the host in double: 1 - 0.999f in float is off by 1.3e-5. */
typedef struct lo_rule {
    double beta1, beta2, one_minus_beta1, one_minus_beta2, eps, feature_clip, lr, decay, log_scale_bound,
        direction_bound;
    int32_t kind0, kind1; /* feature kind of input 0 and of input FEATURES-1: 0 = g/d, 1 = Adam direction */
    int32_t maximize;
    /* format version 2, read only by the _v2 loops (built with -DLO_V2=1, see lo.c):
       sign_equivariant: features and the additive direction times sign(m_t);
       per_tensor_bias: bias is [T][4H] and hb [T][2], one row per tensor of the call (the
       context's biases), instead of the rule's shared [4H] and [2];
       cautious_scale: above 0, the cautious mask: no step where sign(m_t) sign(g_t) <= 0, the
       other steps of tensor tid times coefs[2T + tid] (the constant cautious_scale, or with the
       rescale the tensor's own multiplier, computed on the host from lo_count_agree's counts) */
    int32_t sign_equivariant, per_tensor_bias;
    double cautious_scale;
} lo_rule;

/* exp for the portable loop: exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in
   [-ln2/2, ln2/2] with ln 2 split Cody-Waite style into a head (n * head exact) and a tail,
   exp(r) by its Taylor series (Horner form, coefficients 1/k!), 2^n built in the exponent bits.
   Inputs are clamped to where 2^n stays a normal number. Inline (no libm/libmvec call), so GCC
   vectorizes the loops without -ffinite-math-only.
   fp32: head 0.693145751953125 has 16 significant bits; the r^7 series truncates below 2e-8,
   measured max relative error 3.0e-7 on [-87, 88]. */
static inline float lo_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float e = (float)1 / (float)5040;
    e = e * r + ((float)1 / (float)720);
    e = e * r + ((float)1 / (float)120);
    e = e * r + ((float)1 / (float)24);
    e = e * r + ((float)1 / (float)6);
    e = e * r + ((float)1 / (float)2);
    e = e * r + ((float)1 / (float)1);
    e = e * r + ((float)1 / (float)1);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}

/* fp64: fdlibm's ln2_hi (32 significant bits, n * head exact for |n| <= 1023) and ln2_lo; the
   r^12 series truncates below 2e-17. */
static inline double lo_exp(double x) {
    x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
    double n = rint(x * 1.44269504088896341);
    double r = x - n * 0.6931471803691238;
    r = r - n * 1.9082149292705877e-10;
    double e = (double)1 / (double)479001600;
    e = e * r + ((double)1 / (double)39916800);
    e = e * r + ((double)1 / (double)3628800);
    e = e * r + ((double)1 / (double)362880);
    e = e * r + ((double)1 / (double)40320);
    e = e * r + ((double)1 / (double)5040);
    e = e * r + ((double)1 / (double)720);
    e = e * r + ((double)1 / (double)120);
    e = e * r + ((double)1 / (double)24);
    e = e * r + ((double)1 / (double)6);
    e = e * r + ((double)1 / (double)2);
    e = e * r + ((double)1 / (double)1);
    e = e * r + ((double)1 / (double)1);
    int64_t bits = ((int64_t)n + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
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

#endif
