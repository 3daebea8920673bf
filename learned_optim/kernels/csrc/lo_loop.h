/* The portable loop, included once per variant by lo.c with these macros defined (and undefined
   again at the end of this file):
     LO_NAME   the exported function's name
     LO_CT     compute type (float or double): all maths, and p, g, m, v
     LO_ST     LSTM state type (LO_CT, or uint16_t for bf16 state)
     LO_LOAD, LO_STORE  state element to LO_CT and back (nothing, or bf16_load / bf16_store)
     LO_EXP, LO_SQRT    exp and sqrt for LO_CT
   One pass over a task's coordinates; every value of a coordinate (g, m, v, p, its H hidden and
   H cell values, the 4H gates) lives in registers between its loads and its stores. HIDDEN and
   FEATURES are compile-time constants (one build per network shape), so the loops over hidden
   units unroll and GCC vectorizes the loop over coordinates, F+H gate inputs in registers, each
   of the 4H (F+H) weights a broadcast operand.
   ivdep: the H rows of h and c are n apart (n >= the coordinates walked); GCC cannot see that
   they never overlap.
   With LO_V2 (lo.c) the loop is format version 2's: sigma = sign(m_t) (0 where m_t = 0, 1 when
   k->sign_equivariant is off) multiplies the features before the clip and the additive
   direction, and with k->per_tensor_bias the gate and head biases are tensor tid's rows of bias
   [T][4H] and hb [T][2]; with k->cautious_scale above 0 the cautious mask (lo_common.h), its
   multipliers coefs[2T + tid] after the bias corrections coefs[tid], coefs[T + tid]. Without
   LO_V2 none of this is compiled. */
void LO_NAME(int64_t ntask, const int64_t* tasks, const int64_t* ptrs, const int64_t* numels, int64_t T,
             const LO_CT* coefs, const LO_CT* w, const LO_CT* bias, const LO_CT* hw, const LO_CT* hb,
             const lo_rule* k) {
    const LO_CT sgn = k->maximize ? (LO_CT)-1 : (LO_CT)1;
    const LO_CT s0g = k->kind0 == 0, s1g = k->kind1 == 0, s0a = (LO_CT)1 - s0g, s1a = (LO_CT)1 - s1g;
    const LO_CT b1 = (LO_CT)k->beta1, b2 = (LO_CT)k->beta2, eps = (LO_CT)k->eps, clip = (LO_CT)k->feature_clip,
        lr = (LO_CT)k->lr, decay = (LO_CT)k->decay, scale = (LO_CT)k->log_scale_bound,
        dirb = (LO_CT)k->direction_bound, omb1 = (LO_CT)k->one_minus_beta1, omb2 = (LO_CT)k->one_minus_beta2;
    /* local copies: the compiler then knows no store through p/m/v/h/c changes them */
    LO_CT W[4 * HIDDEN][FEATURES + HIDDEN], B[4 * HIDDEN], HW0[HIDDEN], HW1[HIDDEN];
    for (int r = 0; r < 4 * HIDDEN; r++) {
        B[r] = bias[r];
        for (int i = 0; i < FEATURES + HIDDEN; i++) W[r][i] = w[r * (FEATURES + HIDDEN) + i];
    }
    for (int q = 0; q < HIDDEN; q++) { HW0[q] = hw[q]; HW1[q] = hw[HIDDEN + q]; }
#if LO_V2
    const LO_CT se = k->sign_equivariant ? (LO_CT)1 : (LO_CT)0, nse = (LO_CT)1 - se;
    const int per_tensor = k->per_tensor_bias != 0;
    const int cautious = k->cautious_scale > 0.0;
    int64_t bias_tid = -1;
    LO_CT hb0 = hb[0], hb1 = hb[1];
#define LO_SG(x) (sg * (x))
#else
    const LO_CT hb0 = hb[0], hb1 = hb[1];
#define LO_SG(x) (x)
#endif
    for (int64_t t = 0; t < ntask; t++) {
        const int64_t tid = tasks[3 * t], begin = tasks[3 * t + 1], end = tasks[3 * t + 2];
#if LO_V2
        if (per_tensor && tid != bias_tid) { /* tensor tid's biases (its context's) */
            for (int r = 0; r < 4 * HIDDEN; r++) B[r] = bias[tid * 4 * HIDDEN + r];
            hb0 = hb[2 * tid];
            hb1 = hb[2 * tid + 1];
            bias_tid = tid;
        }
#endif
        const int64_t n = numels[tid];
        const LO_CT ib1 = coefs[tid], sib2 = coefs[T + tid];
#if LO_V2
        const LO_CT ck = cautious ? coefs[2 * T + tid] : (LO_CT)0; /* the kept steps' multiplier */
#endif
        LO_CT* restrict p = (LO_CT*)ptrs[tid];
        const LO_CT* restrict g = (const LO_CT*)ptrs[T + tid];
        LO_CT* restrict m = (LO_CT*)ptrs[2 * T + tid];
        LO_CT* restrict v = (LO_CT*)ptrs[3 * T + tid];
        LO_ST* restrict h = (LO_ST*)ptrs[4 * T + tid];
        LO_ST* restrict c = (LO_ST*)ptrs[5 * T + tid];
#pragma GCC ivdep
        for (int64_t j = begin; j < end; j++) {
            const LO_CT gv = sgn * g[j];
            const LO_CT mv = m[j] * b1 + gv * omb1;
            const LO_CT vv = v[j] * b2 + gv * gv * omb2;
            m[j] = mv;
            v[j] = vv;
            const LO_CT rd = (LO_CT)1 / (LO_SQRT(vv) * sib2 + eps);
            const LO_CT av = mv * ib1 * rd, gn = gv * rd;
#if LO_V2
            const LO_CT sg = se * (mv > (LO_CT)0 ? (LO_CT)1 : (mv < (LO_CT)0 ? (LO_CT)-1 : (LO_CT)0)) + nse;
#endif
            /* feature = sel_g * (g/d) + sel_a * a: arithmetic instead of a branch */
            LO_CT x[FEATURES + HIDDEN];
            const LO_CT f0 = LO_SG(s0g * gn + s0a * av);
            x[0] = f0 < -clip ? -clip : (f0 > clip ? clip : f0);
            if (FEATURES > 1) {
                const LO_CT f1 = LO_SG(s1g * gn + s1a * av);
                x[FEATURES - 1] = f1 < -clip ? -clip : (f1 > clip ? clip : f1);
            }
#pragma GCC unroll 16
            for (int q = 0; q < HIDDEN; q++) x[FEATURES + q] = LO_LOAD(h[q * n + j]);
            LO_CT y0 = hb0, y1 = hb1;
#pragma GCC unroll 16
            for (int q = 0; q < HIDDEN; q++) {
                LO_CT z[4];
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    const int row = r * HIDDEN + q;
                    LO_CT s = B[row];
#pragma GCC unroll 24
                    for (int i = 0; i < FEATURES + HIDDEN; i++) s += W[row][i] * x[i];
                    z[r] = s;
                }
                const LO_CT ig = (LO_CT)1 / ((LO_CT)1 + LO_EXP(-z[0]));
                const LO_CT fg = (LO_CT)1 / ((LO_CT)1 + LO_EXP(-z[1]));
                const LO_CT cg = (LO_CT)2 / ((LO_CT)1 + LO_EXP((LO_CT)-2 * z[2])) - (LO_CT)1;
                const LO_CT og = (LO_CT)1 / ((LO_CT)1 + LO_EXP(-z[3]));
                const LO_CT cn = fg * LO_LOAD(c[q * n + j]) + ig * cg;
                const LO_CT hv = og * ((LO_CT)2 / ((LO_CT)1 + LO_EXP((LO_CT)-2 * cn)) - (LO_CT)1);
                c[q * n + j] = LO_STORE(cn);
                h[q * n + j] = LO_STORE(hv);
                y0 += HW0[q] * hv;
                y1 += HW1[q] * hv;
            }
            const LO_CT t0 = (LO_CT)2 / ((LO_CT)1 + LO_EXP((LO_CT)-2 * y0)) - (LO_CT)1;
            const LO_CT t1 = (LO_CT)2 / ((LO_CT)1 + LO_EXP((LO_CT)-2 * y1)) - (LO_CT)1;
            const LO_CT u = av * LO_EXP(scale * t0) + LO_SG(dirb * t1);
            /* a coordinate whose gradient has always been exactly 0 (v = 0) does not move: a
               select, so a NaN elsewhere stays NaN */
            const LO_CT us = vv == (LO_CT)0 ? (LO_CT)0 : u;
#if LO_V2
            /* the cautious mask: no step unless m_t and g_t have the same sign (compared as signs:
               a product of two tiny values could round to 0), the kept steps times the scale */
            const int agree = (mv > (LO_CT)0 && gv > (LO_CT)0) || (mv < (LO_CT)0 && gv < (LO_CT)0);
            const LO_CT uc = !cautious ? us : (agree ? us * ck : (LO_CT)0);
            p[j] = p[j] * decay - lr * uc;
#else
            p[j] = p[j] * decay - lr * us;
#endif
        }
    }
}

#undef LO_SG
#undef LO_NAME
#undef LO_CT
#undef LO_ST
#undef LO_LOAD
#undef LO_STORE
#undef LO_EXP
#undef LO_SQRT
