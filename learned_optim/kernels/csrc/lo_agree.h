/* The cautious rescale's count (format version 2, lo.c with LO_V2): per tensor, the number of
   coordinates the cautious mask keeps at this step, i.e. where m_t = beta1 m + (1 - beta1) g and
   g (negated with k->maximize) are both non-zero with the same sign, read from m before the
   update; nothing is written but the counts. The host turns them into each tensor's multiplier
   n / (k + 1) (learned_optim/update.py, cautious_scales) before the update loop runs.

   Tasks as in lo_loop.h ((tensor, begin, end) triples, one thread's share); counts[tid] is
   incremented, so each thread passes its own zeroed array. Included once per compute type with
   LO_NAME and LO_CT defined; GCC vectorizes the loop. */
void LO_NAME(int64_t ntask, const int64_t* tasks, const int64_t* ptrs, int64_t T, const lo_rule* k,
             int64_t* counts) {
    const LO_CT sgn = k->maximize ? (LO_CT)-1 : (LO_CT)1;
    const LO_CT b1 = (LO_CT)k->beta1, omb1 = (LO_CT)k->one_minus_beta1;
    for (int64_t t = 0; t < ntask; t++) {
        const int64_t tid = tasks[3 * t], begin = tasks[3 * t + 1], end = tasks[3 * t + 2];
        const LO_CT* restrict g = (const LO_CT*)ptrs[T + tid];
        const LO_CT* restrict m = (const LO_CT*)ptrs[2 * T + tid];
        int64_t kept = 0;
        for (int64_t j = begin; j < end; j++) {
            const LO_CT gv = sgn * g[j];
            const LO_CT mv = m[j] * b1 + gv * omb1;
            kept += (mv > (LO_CT)0 && gv > (LO_CT)0) || (mv < (LO_CT)0 && gv < (LO_CT)0);
        }
        counts[tid] += kept;
    }
}

#undef LO_NAME
#undef LO_CT
