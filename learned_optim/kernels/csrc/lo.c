/* The fused learned update on CPU: one loop over the coordinates of a list of tensors, each
   coordinate's g, m, v, p, h, c read once and written once, everything in between in registers.
   Built and loaded by learned_optim/kernels/cpu.py (through cbuild.py) as one library per
   network shape, with -DHIDDEN=<H> -DFEATURES=<F> on the command line.

   Exported (all with the signature of lo_loop.h; the weights are the network's plain weights in
   the compute type, the constants a struct lo_rule):
     lo_f32, lo_f32_bf16, lo_f64   the portable loops: fp32 maths with fp32 or bf16 LSTM state,
                                   and fp64 throughout (GCC vectorizes them)
     lo_f32_simd, lo_f32_bf16_simd the hand-vectorized fp32 loops (lo_simd.h), only where the
                                   target has AVX-512 or AVX2+FMA
     lo_simd()                     their vector width in bits, 0 where they are not built
     lo_simd_exp2, lo_simd_rcp1p   the vector approximations over arrays, for the tests
     lo_inputs_bounded             whether the hand-vectorized loops leave out the clamps of the
                                   gates' and the head's exps for these weights (lo_simd.h)

   Built with -DLO_V2=1 (a separate library, built only when a format version 2 rule runs), the
   same loops are exported as lo_f32_v2, ..., lo_f32_bf16_simd_v2 instead: the rule of format
   version 2 (sign equivariance and per-tensor biases, switched by the lo_rule fields of the same
   names). The version 1 loops are then the unchanged code of the version 1 rule, not a branch.
   That library also exports lo_count_agree_f32 and lo_count_agree_f64 (lo_agree.h), the cautious
   rescale's per-tensor count before the update. */
#if !defined(HIDDEN) || !defined(FEATURES)
#error "build with -DHIDDEN=<hidden size> -DFEATURES=<feature count>"
#endif

#ifndef LO_V2
#define LO_V2 0
#endif
#define LO_CAT_(a, b) a##b
#define LO_CAT(a, b) LO_CAT_(a, b)
#if LO_V2
#define LO_FN(name) LO_CAT(name, _v2)
#else
#define LO_FN(name) name
#endif

#include "lo_common.h"

#define LO_NAME LO_FN(lo_f32)
#define LO_CT float
#define LO_ST float
#define LO_LOAD(x) (x)
#define LO_STORE(x) (x)
#define LO_EXP lo_expf
#define LO_SQRT sqrtf
#include "lo_loop.h"

#define LO_NAME LO_FN(lo_f32_bf16)
#define LO_CT float
#define LO_ST uint16_t
#define LO_LOAD bf16_load
#define LO_STORE bf16_store
#define LO_EXP lo_expf
#define LO_SQRT sqrtf
#include "lo_loop.h"

#define LO_NAME LO_FN(lo_f64)
#define LO_CT double
#define LO_ST double
#define LO_LOAD(x) (x)
#define LO_STORE(x) (x)
#define LO_EXP lo_exp
#define LO_SQRT sqrt
#include "lo_loop.h"

/* GCC schedules instructions before register allocation on x86 only when asked; in the
   hand-vectorized loops below, whose ~25 exps each keep their constants in registers, scheduling
   for register pressure cuts spills: the AVX-512 step ~12% and the AVX2 step ~5% faster, every
   result bit for bit the same (benchmarks/results/speed-v2/avx2-block/README.md). Clang has no
   such pass and ignores the pragma; the portable loops above are not affected. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("schedule-insns", "sched-pressure")
#endif
#include "lo_simd.h"

#if defined(LO_SIMD)
#define LO_NAME LO_FN(lo_f32_simd)
#define LO_ST float
#define LO_LDS ld_f32
#define LO_STS st_f32
#include "lo_simd_loop.h"

#define LO_NAME LO_FN(lo_f32_bf16_simd)
#define LO_ST uint16_t
#define LO_LDS ld_bf16
#define LO_STS st_bf16
#include "lo_simd_loop.h"
#endif

#if LO_V2
#define LO_NAME lo_count_agree_f32
#define LO_CT float
#include "lo_agree.h"

#define LO_NAME lo_count_agree_f64
#define LO_CT double
#include "lo_agree.h"
#endif
