/* The hand-vectorized fp32 loop (the vector layer and its rationale: lo_simd.h), included once
   per LSTM state type by lo.c with these macros defined (and undefined again at the end):
     LO_NAME   the exported function's name
     LO_ST     LSTM state type (float, or uint16_t for bf16 state)
     LO_LDS, LO_STS  masked vector load and store of the state (ld_f32/st_f32 or ld_bf16/st_bf16)
   The maths of lo_loop.h, with the gate and head weights (and the log-scale bound) rescaled on
   entry so that every exp is one v_exp2. With LO_V2, format version 2's rule as in lo_loop.h:
   sigma = sign(m_t) (or 1), tensor tid's biases, rescaled like the shared ones, per task, and the
   cautious mask.
   Two specializations of the body: with `bounded` (the weights keep every gate and head exp's
   input in range, lo_inputs_bounded: the shipped weights' largest is ~34 of 125) those exps skip
   their clamp, 2 of the ~12 vector instructions of each, and h is clamped to [-1, 1] on load
   instead; bit for bit the same results for every state a step wrote. */
static inline __attribute__((always_inline)) void LO_CAT(LO_NAME, _body)(
    int64_t ntask, const int64_t* tasks, const int64_t* ptrs, const int64_t* numels, int64_t T, const float* coefs,
    const float* w, const float* bias, const float* hw, const float* hb, const lo_rule* k, const int bounded) {
    const V sgn = SET1(k->maximize ? -1.0f : 1.0f);
    const V s0g = SET1(k->kind0 == 0), s1g = SET1(k->kind1 == 0);
    const V s0a = SET1(k->kind0 != 0), s1a = SET1(k->kind1 != 0);
    const float fclip = (float)k->feature_clip;
    const V b1 = SET1((float)k->beta1), b2 = SET1((float)k->beta2), eps = SET1((float)k->eps), clip = SET1(fclip),
        nclip = SET1(-fclip), lr = SET1((float)k->lr), decay = SET1((float)k->decay),
        dirb = SET1((float)k->direction_bound), omb1 = SET1((float)k->one_minus_beta1),
        omb2 = SET1((float)k->one_minus_beta2), one = SET1(1.0f), two = SET1(2.0f), mone = SET1(-1.0f);
#define LO_EXP2B(x) (bounded ? v_exp2_in_range(x) : v_exp2(x))
    /* gate rows pre-scaled so that z' = -z log2 e (i, f, o) and z' = -2z log2 e (g): 2^z' is the
       exp(-z) or exp(-2z) the sigmoid and tanh need; the head's by -2 log2 e for its two tanh */
    const float l2e = 1.44269504088896341f;
    const V ctanh = SET1(-2.0f * l2e), escale = SET1((float)k->log_scale_bound * l2e);
    V W[4 * HIDDEN][FEATURES + HIDDEN], B[4 * HIDDEN], HW0[HIDDEN], HW1[HIDDEN];
    for (int r = 0; r < 4 * HIDDEN; r++) {
        const float sc = (r >= 2 * HIDDEN && r < 3 * HIDDEN) ? -2.0f * l2e : -l2e;
        B[r] = SET1(sc * bias[r]);
        for (int i = 0; i < FEATURES + HIDDEN; i++) W[r][i] = SET1(sc * w[r * (FEATURES + HIDDEN) + i]);
    }
    for (int q = 0; q < HIDDEN; q++) { HW0[q] = SET1(-2.0f * l2e * hw[q]); HW1[q] = SET1(-2.0f * l2e * hw[HIDDEN + q]); }
#if LO_V2
    const V se = SET1(k->sign_equivariant ? 1.0f : 0.0f);
    const int per_tensor = k->per_tensor_bias != 0;
    const int cautious = k->cautious_scale > 0.0;
    int64_t bias_tid = -1;
    V hb0 = SET1(-2.0f * l2e * hb[0]), hb1 = SET1(-2.0f * l2e * hb[1]);
#define LO_SG(u, x) v_mul(sg[u], x)
#else
    const V hb0 = SET1(-2.0f * l2e * hb[0]), hb1 = SET1(-2.0f * l2e * hb[1]);
#define LO_SG(u, x) (x)
#endif
    for (int64_t t = 0; t < ntask; t++) {
        const int64_t tid = tasks[3 * t], begin = tasks[3 * t + 1], end = tasks[3 * t + 2];
#if LO_V2
        if (per_tensor && tid != bias_tid) { /* tensor tid's biases, scaled as above */
            for (int r = 0; r < 4 * HIDDEN; r++) {
                const float sc = (r >= 2 * HIDDEN && r < 3 * HIDDEN) ? -2.0f * l2e : -l2e;
                B[r] = SET1(sc * bias[tid * 4 * HIDDEN + r]);
            }
            hb0 = SET1(-2.0f * l2e * hb[2 * tid]);
            hb1 = SET1(-2.0f * l2e * hb[2 * tid + 1]);
            bias_tid = tid;
        }
#endif
        const int64_t n = numels[tid];
        const V ib1 = SET1(coefs[tid]), sib2 = SET1(coefs[T + tid]);
#if LO_V2
        const V ck = SET1(cautious ? coefs[2 * T + tid] : 0.0f); /* the kept steps' multiplier */
#endif
        float* p = (float*)ptrs[tid];
        const float* g = (const float*)ptrs[T + tid];
        float* m = (float*)ptrs[2 * T + tid];
        float* v = (float*)ptrs[3 * T + tid];
        LO_ST* h = (LO_ST*)ptrs[4 * T + tid];
        LO_ST* c = (LO_ST*)ptrs[5 * T + tid];
        for (int64_t j0 = begin; j0 < end; j0 += UB * VL) {
            /* A block of UB vectors in three passes (moments and features; the LSTM, one hidden
               unit at a time for U vectors side by side, its second half in a pass of its own
               with LO_SPLIT_PASSES; the head and the write), each vector's
               values kept between passes in these arrays: a pass then needs few registers
               (lo_avx2.h says why that matters). The last block takes only the vectors its
               coordinates need, in whole groups of U (the rest are masked off). */
            const int64_t groups = (end - j0 + VL * U - 1) / (VL * U); /* groups of U vectors left */
            const int ub = (UB == U || groups * U >= UB) ? UB : (int)(groups * U);
            M km[UB];
            V x[UB][FEATURES + HIDDEN], av[UB], y0[UB], y1[UB];
#if LO_V2
            V sg[UB]; /* sign(m_t) (0 where m_t = 0), or 1 without sign equivariance */
#endif
            LO_UNROLL_B
            for (int u = 0; u < ub; u++) {
                const int64_t j = j0 + u * VL;
                km[u] = lo_mask(end - j);
                const V gv = v_mul(sgn, ld_f32(g + j, km[u]));
                const V mv = v_fmadd(ld_f32(m + j, km[u]), b1, v_mul(gv, omb1));
                const V vv = v_fmadd(ld_f32(v + j, km[u]), b2, v_mul(v_mul(gv, gv), omb2));
                st_f32(m + j, km[u], mv);
                st_f32(v + j, km[u], vv);
                const V rd = v_div(one, v_fmadd(v_sqrt(vv), sib2, eps));
                const V a = v_mul(v_mul(mv, ib1), rd), gn = v_mul(gv, rd);
                av[u] = a;
#if LO_V2
                sg[u] = v_fmadd(se, v_sub(v_signof(mv), one), one);
#endif
                const V f0 = LO_SG(u, v_fmadd(s0g, gn, v_mul(s0a, a)));
                x[u][0] = v_min(clip, v_max(nclip, f0)); /* NaN stays NaN, as torch.clamp */
                if (FEATURES > 1) {
                    const V f1 = LO_SG(u, v_fmadd(s1g, gn, v_mul(s1a, a)));
                    x[u][FEATURES - 1] = v_min(clip, v_max(nclip, f1));
                }
                #pragma GCC unroll 32
                for (int q = 0; q < HIDDEN; q++) {
                    const V hq = LO_LDS(h + q * n + j, km[u]);
                    x[u][FEATURES + q] = bounded ? v_min(one, v_max(mone, hq)) : hq; /* NaN stays NaN */
                }
                y0[u] = hb0;
                y1[u] = hb1;
            }
            /* hidden unit q of vector u in two parts: its gates and new cell (from the gate inputs
               zb), then the cell's tanh, h and the head's sums */
#define LO_GATES(u) do { \
                const V ig = v_rcp1p(LO_EXP2B(zb[0][u])); \
                const V fg = v_rcp1p(LO_EXP2B(zb[1][u])); \
                const V cg = v_fmsub(two, v_rcp1p(LO_EXP2B(zb[2][u])), one); \
                og[u] = v_rcp1p(LO_EXP2B(zb[3][u])); \
                cn[u] = v_fmadd(fg, LO_LDS(c + q * n + j0 + (u) * VL, km[u]), v_mul(ig, cg)); \
            } while (0)
#define LO_OUT(u) do { \
                const V th = v_fmsub(two, v_rcp1p(v_exp2(v_mul(ctanh, cn[u]))), one); \
                const V hv = v_mul(og[u], th); \
                LO_STS(c + q * n + j0 + (u) * VL, km[u], cn[u]); \
                LO_STS(h + q * n + j0 + (u) * VL, km[u], hv); \
                y0[u] = v_fmadd(HW0[q], hv, y0[u]); \
                y1[u] = v_fmadd(HW1[q], hv, y1[u]); \
            } while (0)
            #pragma GCC unroll 32
            for (int q = 0; q < HIDDEN; q++) {
                V zb[4][UB], og[UB], cn[UB];
                LO_UNROLL_B
                for (int u0 = 0; u0 < ub; u0 += U) {
                    #pragma GCC unroll 32
                    for (int r = 0; r < 4; r++)
                        #pragma GCC unroll 32
                        for (int s = 0; s < U; s++) zb[r][u0 + s] = B[r * HIDDEN + q];
                    #pragma GCC unroll 32
                    for (int i = 0; i < FEATURES + HIDDEN; i++)
                        #pragma GCC unroll 32
                        for (int r = 0; r < 4; r++)
                            #pragma GCC unroll 32
                            for (int s = 0; s < U; s++)
                                zb[r][u0 + s] = v_fmadd(W[r * HIDDEN + q][i], x[u0 + s][i], zb[r][u0 + s]);
#if !LO_SPLIT_PASSES
                    #pragma GCC unroll 32
                    for (int s = 0; s < U; s++) {
                        LO_GATES(u0 + s);
                        LO_OUT(u0 + s);
                    }
#endif
                }
#if LO_SPLIT_PASSES
                /* each part over the whole block: every vector's long chain (gate inputs, exps,
                   cell, its tanh) then overlaps with the next vectors' (lo_avx2.h) */
                LO_UNROLL_B
                for (int u = 0; u < ub; u++) LO_GATES(u);
                LO_UNROLL_B
                for (int u = 0; u < ub; u++) LO_OUT(u);
#endif
            }
#undef LO_GATES
#undef LO_OUT
            LO_UNROLL_B
            for (int u = 0; u < ub; u++) {
                const int64_t j = j0 + u * VL;
                const V t0 = v_fmsub(two, v_rcp1p(LO_EXP2B(y0[u])), one);
                const V t1 = v_fmsub(two, v_rcp1p(LO_EXP2B(y1[u])), one);
                /* zero where v = 0 (a gradient that has always been exactly 0): a select on v as
                   stored above (reloaded from L1 rather than kept live across the gates) */
                V step = v_nonzero_where(ld_f32(v + j, km[u]), v_fmadd(av[u], LO_EXP2B(v_mul(escale, t0)), LO_SG(u, v_mul(dirb, t1))));
#if LO_V2
                if (cautious) /* the cautious mask (lo_loop.h): m_t and g reloaded from L1, signs compared */
                    step = v_positive_where(v_mul(v_signof(ld_f32(m + j, km[u])), v_signof(v_mul(sgn, ld_f32(g + j, km[u])))),
                                            v_mul(step, ck));
#endif
                st_f32(p + j, km[u], v_fnmadd(lr, step, v_mul(ld_f32(p + j, km[u]), decay)));
            }
        }
    }
}

void LO_NAME(int64_t ntask, const int64_t* tasks, const int64_t* ptrs, const int64_t* numels, int64_t T,
             const float* coefs, const float* w, const float* bias, const float* hw, const float* hb,
             const lo_rule* k) {
    const int64_t rows = (LO_V2 && k->per_tensor_bias) ? T : 1;
    if (lo_inputs_bounded(w, bias, hw, hb, rows, k->feature_clip, k->log_scale_bound))
        LO_CAT(LO_NAME, _body)(ntask, tasks, ptrs, numels, T, coefs, w, bias, hw, hb, k, 1);
    else
        LO_CAT(LO_NAME, _body)(ntask, tasks, ptrs, numels, T, coefs, w, bias, hw, hb, k, 0);
}

#undef LO_EXP2B
#undef LO_SG
#undef LO_NAME
#undef LO_ST
#undef LO_LDS
#undef LO_STS
