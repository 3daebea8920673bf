/* The vector layer on AVX-512 (F, BW, VL: the last two for the bf16 state's loads and stores),
   included by lo_simd.h when the compiler targets it. */
#include <immintrin.h>
#define LO_SIMD 512
#define U 3 /* vectors side by side: 2 -> 7.7, 3 -> 7.5, 4 -> 7.6 ns/coordinate here */
#define VL 16
/* a block is the U vectors (lo_simd_loop.h), its loops unrolled: 32 registers hold them */
#define UB U
#define LO_UNROLL_B _Pragma("GCC unroll 32")
/* one pass per hidden unit: unrolled, the block's vectors already interleave, and splitting the
   pass only adds spills (lo_avx2.h splits it) */
#define LO_SPLIT_PASSES 0
typedef __m512 V;
typedef __mmask16 M;
#define SET1 _mm512_set1_ps
LO_VECTOR_OPS(_mm512)

/* 2^x in two halves around v_exp2's polynomial (lo_simd.h): n = round(x), f = x - n exactly,
   then poly(f) * 2^n as one vscalefps */
#define LO_EXP2_SCALE 1.0f
static inline V v_exp2_split(V x, V* f) {
    const V n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    *f = _mm512_sub_ps(x, n);
    return n;
}
static inline V v_exp2_join(V e, V n) { return _mm512_scalef_ps(e, n); }
/* 1 / d: vrcp14ps and one Newton step (relative error ~2^-28 before rounding) */
static inline V v_recip(V d) {
    V r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, SET1(1.0f)), r);
}
/* y where x != 0 (NaN included), else +0: a masked move, never a product */
static inline V v_nonzero_where(V x, V y) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_UQ), y); }
/* y where x > 0, else +0 (and +0 where x is NaN): a masked move */
static inline V v_positive_where(V x, V y) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), y); }
/* sign(x): +-1, and +0 where x = +-0 (a NaN gives +-1); integer and/or, AVX-512F only */
static inline V v_signof(V x) {
    const __m512i bits = _mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN)),
                                         _mm512_castps_si512(SET1(1.0f)));
    return v_nonzero_where(x, _mm512_castsi512_ps(bits));
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
