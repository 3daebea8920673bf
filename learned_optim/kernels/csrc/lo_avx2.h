/* The same loop on 8-lane AVX2 vectors (no AVX-512: most client CPUs). No vscalefps, vrcp14ps
   or 16-bit masked memory ops there: 2^n is built in the exponent bits, 1/d is a division, and
   the bf16 state's tails go through a small buffer. */
#include <immintrin.h>
#define LO_SIMD 256
/* UB vectors per block (lo_simd_loop.h), the block's loops over vectors not unrolled: a block of
   8 vectors, each pass looping over them with its values in L1 between passes, keeps the four
   hidden units' gates from holding every vector's inputs in 16 registers at once (timings:
   benchmarks/results/speed-v2/avx2-block/README.md). Each hidden unit's step is split in two
   passes over the block (LO_SPLIT_PASSES): every vector's gate inputs, gates and new cell, then
   every vector's tanh(cell), h and head sums. A vector's dependent chain in each pass is then half
   as long, so the core's out-of-order window can hold more vectors' chains at once (the likely
   reason; no counters were available). U vectors side by side in the gate inputs: with the split,
   U = 1. On a Zen 3 EPYC (native AVX2) the split took a 1e6-parameter step from 19.0-19.4 ms to
   14.0-15.7, and U = 1 (was 2) to 13.4-13.5, every result bit the same
   (benchmarks/results/speed-v2/zen3/README.md); before the split, U = 2 was best (Zen 2:
   benchmarks/results/speed-v2/zen2/README.md). */
#define U 1
#define UB 8
#define LO_UNROLL_B _Pragma("GCC unroll 1")
#define LO_SPLIT_PASSES 1
#define VL 8
typedef __m256 V;
typedef __m256i M;
#define SET1 _mm256_set1_ps
LO_VECTOR_OPS(_mm256)

/* 2^x in two halves around v_exp2's polynomial (lo_simd.h): k = x + 1.5 * 2^23 + 128 rounds x to
   the nearest integer n, ties to even as vroundps (the constant is even), f = x - n exactly, and
   k's low bits are n + 128, so k << 23 is the float 2^(n + 1): three single-uop instructions
   where vroundps, vcvtps2dq, vpaddd and vpslld were five (vroundps is two uops on Intel). The
   polynomial's coefficients are halved (LO_EXP2_SCALE), so poly(f) / 2 * 2^(n + 1) is the same
   float as poly(f) * 2^n, bit for bit: halving is exact and so is every product by a power of 2
   here (x is in [-125, 126]: v_exp2_in_range). */
#define LO_EXP2_SCALE 0.5f
static inline V v_exp2_split(V x, V* f) {
    const V magic = SET1(12583040.0f); /* 1.5 * 2^23 + 128 */
    /* empty asm statements make x, k and n opaque, so that -ffast-math can neither fold (x + c) - c
       to x, nor reassociate x - (k - c), nor move c into the sum that made x */
    __asm__("" : "+x"(x));
    V k = _mm256_add_ps(x, magic);
    __asm__("" : "+x"(k));
    V n = _mm256_sub_ps(k, magic);
    __asm__("" : "+x"(n));
    *f = _mm256_sub_ps(x, n);
    return k;
}
static inline V v_exp2_join(V e, V k) { return _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(k), 23))); }
static inline V v_recip(V d) { return _mm256_div_ps(SET1(1.0f), d); }
/* y where x != 0 (NaN included), else +0: a bitwise and with the compare mask, never a product */
static inline V v_nonzero_where(V x, V y) { return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NEQ_UQ), y); }
/* y where x > 0, else +0 (and +0 where x is NaN): a bitwise and with the compare mask */
static inline V v_positive_where(V x, V y) { return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ), y); }
/* sign(x): +-1, and +0 where x = +-0 (a NaN gives +-1) */
static inline V v_signof(V x) {
    return v_nonzero_where(x, _mm256_or_ps(_mm256_and_ps(x, SET1(-0.0f)), SET1(1.0f)));
}
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
