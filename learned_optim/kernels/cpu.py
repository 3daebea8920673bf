"""The fused CPU backend: the learned update as one C loop, compiled at first use with the system
C compiler (``cbuild.py``; the sources are the C files in ``csrc/``) and loaded with ctypes.

The eager backend spends its time in ~30 passes over each chunk, one torch op each. This is the
same maths as one loop over the coordinates: each coordinate's g, m, v, p, h, c are read once
and written once, and everything in between (features, 4H gates, cell, head) stays in registers.
Two versions of that loop:

* a portable one (``csrc/lo_loop.h``), vectorized by GCC: the fp64 loop everywhere, and the fp32
  loop on CPUs with neither AVX-512 nor AVX2+FMA;
* a hand-vectorized one for fp32 (``csrc/lo_simd_loop.h``) over a small vector layer with an
  AVX-512 and an AVX2+FMA implementation (``csrc/lo_avx512.h``, ``csrc/lo_avx2.h``), whichever
  the build's ``-march`` has. It folds log2 e into the weights itself, on entry.

Measured at 1e6 parameters, one thread, on the benchmark machine (AMD EPYC, Zen 4;
``benchmarks/results/speed.md``): hand-vectorized AVX-512 9.6 ms per step, portable 18.5 ms,
hand-vectorized built for AVX2 15.9 ms, eager chunk loop 38.6 ms.

Both receive the prepared rule as it is: its plain weights, and its constants through the
``lo_rule`` struct (``_RuleStruct`` here, ``csrc/lo_common.h`` there).

Format version 2 rules (``rule.sign_equivariant``, the cautious mask ``rule.cautious_scale``, and
the per-tensor biases of a rule with context, ``Batch.gate_bias`` / ``head_bias``) run in a second
library per network shape, built with ``-DLO_V2=1`` the first time such a rule runs: the same loops
with sigma = sign(m_t) on the features and the additive direction, the mask on the step, and tensor
i's biases read for its coordinates (``V2``). The cautious rescale's count per tensor before
the update (``count_agree``) is that library's ``lo_count_agree_*`` (``csrc/lo_agree.h``).
The version 1 library, and so a version 1 rule's speed and results, stay exactly as they were.

Covered dtypes: fp32 maths with fp32 p, g, m, v and fp32 or bf16 LSTM state; fp64 throughout;
hidden sizes up to ``MAX_HIDDEN``. Anything else stays on the eager backend under
``impl="auto"``.

Switches, read once when this module is imported: ``LEARNED_OPTIM_C_KERNEL=0`` makes
``available()`` false (``impl="auto"`` then runs the eager loop on CPU), ``LEARNED_OPTIM_C_SIMD=0``
runs the portable loop where the hand-vectorized one was built (module attribute ``USE_SIMD``;
tests set it directly). A missing compiler or a failed build also make ``available()`` false,
with one warning that carries the compiler's whole message.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch

from . import cbuild
from .rule import Batch, PreparedRule, chunk_plan

__all__ = ["available", "simd_width", "supports", "select", "update", "count_agree", "MAX_HIDDEN", "ENABLED",
           "USE_SIMD", "V2"]

NAME = "the C loop"
COVERS = "fp32 parameters, gradients and moments with fp32 or bf16 LSTM state, and fp64 throughout"
ENABLED = os.environ.get("LEARNED_OPTIM_C_KERNEL", "1") != "0"
USE_SIMD = os.environ.get("LEARNED_OPTIM_C_SIMD", "1") != "0"
# Implements format version 2 rules (update.learned_update reads this).
V2 = True

# Threads get coordinate ranges in multiples of this many (whole cache lines, whole vectors).
SPLIT_QUANTUM = 128
# Largest hidden size the C loop handles: beyond it the unrolled gate loops (4H x (F+H) weights
# in registers or broadcast operands) stop paying off, and the eager loop's matmul is the better
# tool.
MAX_HIDDEN = 16


class _RuleStruct(ctypes.Structure):
    """``struct lo_rule`` of csrc/lo_common.h, field for field."""

    _fields_ = [(name, ctypes.c_double) for name in (
        "beta1", "beta2", "one_minus_beta1", "one_minus_beta2", "eps", "feature_clip", "lr", "decay",
        "log_scale_bound", "direction_bound")] + [
        ("kind0", ctypes.c_int32), ("kind1", ctypes.c_int32), ("maximize", ctypes.c_int32),
        ("sign_equivariant", ctypes.c_int32), ("per_tensor_bias", ctypes.c_int32),
        ("cautious_scale", ctypes.c_double)]


_LOOPS = ("lo_f32", "lo_f32_bf16", "lo_f64")
_SIMD_LOOPS = ("lo_f32_simd", "lo_f32_bf16_simd")

_lock = threading.Lock()
_libs: dict[tuple[int, int], ctypes.CDLL] = {}  # (hidden size, feature count) -> library
_libs_v2: dict[tuple[int, int], ctypes.CDLL] = {}  # the same for the format version 2 loops
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


def _load(hidden_size: int, num_features: int, v2: bool = False) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(cbuild.build(hidden_size, num_features, extra_cflags=("-DLO_V2=1",) if v2 else ())))
    suffix = "_v2" if v2 else ""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    loop_args = [i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, ptr, ptr, ctypes.POINTER(_RuleStruct)]
    lib.lo_simd.restype = ctypes.c_int
    lib.lo_simd.argtypes = []
    for name in _LOOPS + (_SIMD_LOOPS if lib.lo_simd() else ()):
        fn = getattr(lib, name + suffix)
        fn.restype = None
        fn.argtypes = loop_args
    if v2:
        for name in ("lo_count_agree_f32", "lo_count_agree_f64"):
            getattr(lib, name).restype = None
            getattr(lib, name).argtypes = [i64, ptr, ptr, i64, ctypes.POINTER(_RuleStruct), ptr]
    if lib.lo_simd():
        for name in ("lo_simd_exp2", "lo_simd_rcp1p"):
            getattr(lib, name).restype = None
            getattr(lib, name).argtypes = [i64, ptr, ptr]
        lib.lo_inputs_bounded.restype = ctypes.c_int
        lib.lo_inputs_bounded.argtypes = [ptr, ptr, ptr, ptr, i64, ctypes.c_double, ctypes.c_double]
    return lib


def available(hidden_size: int = 4, num_features: int = 2, *, v2: bool = False) -> bool:
    """True when the compiled loop for this network shape can be used (built on the first call
    for the shape; False if a build fails, and no further builds are tried). ``v2``: the loop of
    format version 2 rules (its own library)."""
    global _failed
    if not ENABLED:
        return False
    shape = (int(hidden_size), int(num_features))
    libs = _libs_v2 if v2 else _libs
    if shape in libs or _failed:
        return shape in libs
    with _lock:
        if shape not in libs and not _failed:
            try:
                libs[shape] = _load(*shape, v2=bool(v2))
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _failed = True
                warnings.warn(
                    f"learned_optim: the fused CPU loop could not be built, so the slower eager loop runs "
                    f"instead. Install gcc, or set LEARNED_OPTIM_C_KERNEL=0 to silence this.\n{e}",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return shape in libs


def simd_width(hidden_size: int = 4, num_features: int = 2) -> int:
    """Vector width in bits of the hand-vectorized fp32 loop built for this network shape (512
    for AVX-512, 256 for AVX2), or 0 when only the portable loop or no C loop exists here."""
    if not available(hidden_size, num_features):
        return 0
    return int(_libs[(int(hidden_size), int(num_features))].lo_simd())


def supports(p, g, m, v, h, c, hidden_size: int) -> bool:
    """Whether the C loop handles this tensor's dtypes (all on CPU, contiguous tensors given)."""
    if hidden_size > MAX_HIDDEN or p.device.type != "cpu":
        return False
    if p.dtype == torch.float64:
        return all(t.dtype == torch.float64 for t in (g, m, v, h, c))
    return (p.dtype == g.dtype == m.dtype == v.dtype == torch.float32
            and h.dtype == c.dtype and h.dtype in (torch.float32, torch.bfloat16))


def select(rule: PreparedRule, batch: Batch, todo: Sequence[int]) -> list[int]:
    """The tensors of ``todo`` this backend updates: those ``supports`` accepts, or none when the
    loop is unavailable (switched off, or it does not build)."""
    hs = rule.hidden_size
    # supports' verdict per combination of dtypes (a batch is on one device): this runs for every
    # tensor at every step, and a model has few such combinations
    verdicts: dict[tuple, bool] = {}
    ok = []
    ps, gs, ms, vs, hs_, cs = batch.tensors
    for i in todo:
        p, g, m, v, h, c = ps[i], gs[i], ms[i], vs[i], hs_[i], cs[i]
        sig = (p.dtype, g.dtype, m.dtype, v.dtype, h.dtype, c.dtype)
        good = verdicts.get(sig)
        if good is None:
            good = verdicts[sig] = supports(p, g, m, v, h, c, hs)
        if good:
            ok.append(i)
    return ok if ok and available(hs, rule.num_features, v2=_is_v2(rule, batch)) else []


def _is_v2(rule: PreparedRule, batch: Batch) -> bool:
    """Whether the rule needs the format version 2 loop: sign equivariance, the cautious mask or
    per-tensor biases."""
    return rule.v2 or batch.gate_bias is not None


def unavailable_reason(rule: PreparedRule) -> str:
    if not ENABLED:
        return "it is switched off (LEARNED_OPTIM_C_KERNEL=0)"
    if rule.hidden_size > MAX_HIDDEN:
        return f"hidden size {rule.hidden_size} is above its MAX_HIDDEN = {MAX_HIDDEN}"
    if not available(rule.hidden_size, rule.num_features):
        return "it could not be built (see the warning above)"
    return f"it covers only {COVERS}"


def _consts(rule: PreparedRule, per_tensor: bool) -> _RuleStruct:
    kinds = rule.feature_kinds
    return _RuleStruct(rule.beta1, rule.beta2, rule.one_minus_beta1, rule.one_minus_beta2, rule.eps,
                       rule.feature_clip, rule.lr, rule.decay, rule.log_scale_bound, rule.direction_bound,
                       kinds[0], kinds[-1], int(rule.maximize), int(bool(rule.sign_equivariant)), int(per_tensor),
                       rule.cautious_scale)


def _run(tasks_of: list, call) -> None:
    """``call(item)`` for each thread's item of ``tasks_of`` (its task list, or its index): in this
    thread when there is one, else on the pool (ctypes releases the GIL)."""
    global _pool
    if len(tasks_of) == 1:
        call(tasks_of[0])
        return
    if _pool is None or _pool_size[0] < len(tasks_of):
        _pool = ThreadPoolExecutor(max_workers=len(tasks_of), thread_name_prefix="learned_optim")
        _pool_size[0] = len(tasks_of)
    for f in [_pool.submit(call, t) for t in tasks_of]:
        f.result()


def count_agree(rule: PreparedRule, batch: Batch) -> torch.Tensor | None:
    """The cautious rescale's count for every tensor of the batch (``kernels.eager.count_agree``'s
    numbers: the coordinates whose m_t and g agree in sign), ``[T]`` fp64, by the C loop's library
    on as many threads as the update; ``None`` where the C loop cannot read the batch (not on CPU,
    gradients or moments not in the compute dtype, the loop unavailable): the caller counts with
    foreach ops then."""
    gs, ms = batch.tensors[1], batch.tensors[2]
    cdt = rule.dtype
    if (not batch.numels or gs[0].device.type != "cpu" or any(t.dtype != cdt for t in (*gs, *ms))
            or rule.hidden_size > MAX_HIDDEN or not available(rule.hidden_size, rule.num_features, v2=True)):
        return None
    lib = _libs_v2[(rule.hidden_size, rule.num_features)]
    fn = lib.lo_count_agree_f64 if cdt == torch.float64 else lib.lo_count_agree_f32
    t_count = len(batch.numels)
    zeros = [0] * t_count
    ptrs = torch.tensor(zeros + [t.data_ptr() for t in gs] + [t.data_ptr() for t in ms], dtype=torch.int64)
    consts = _consts(rule, False)
    tasks_of = _split(list(batch.numels), max(1, torch.get_num_threads()))
    counts = torch.zeros(max(1, len(tasks_of)), t_count, dtype=torch.int64)

    def call(i: int) -> None:
        tasks = tasks_of[i]
        fn(tasks.shape[0], tasks.data_ptr(), ptrs.data_ptr(), t_count, ctypes.byref(consts), counts[i].data_ptr())

    _run(list(range(len(tasks_of))), call)
    return counts.sum(0).double()


def update(rule: PreparedRule, batch: Batch, idx: Sequence[int]) -> None:
    """The update, in place, for the tensors ``idx`` of the batch (all accepted by ``select``).

    Work is split into equal coordinate ranges for ``torch.get_num_threads()`` threads (ctypes
    releases the GIL).
    """
    v2 = _is_v2(rule, batch)
    lib = (_libs_v2 if v2 else _libs)[(rule.hidden_size, rule.num_features)]
    cdt = rule.dtype
    per_tensor = batch.gate_bias is not None
    groups: dict[torch.dtype, list[int]] = {}
    for i in idx:
        groups.setdefault(batch.tensors[4][i].dtype, []).append(i)
    w = [t.contiguous() for t in (rule.weight, rule.bias, rule.head_weight, rule.head_bias)]
    consts = _consts(rule, per_tensor)
    simd = bool(lib.lo_simd()) and USE_SIMD
    nthreads = max(1, torch.get_num_threads())
    for sdt, sub in groups.items():
        name = "lo_f64" if cdt == torch.float64 else ("lo_f32" if sdt == torch.float32 else "lo_f32_bf16")
        if cdt == torch.float32 and simd:
            name += "_simd"
        fn = getattr(lib, name + ("_v2" if v2 else ""))
        gb, hb = w[1], w[3]
        if per_tensor:  # the rows of this group's tensors: [len(sub), 4H] and [len(sub), 2]
            gb, hb = (t.contiguous() if sub == list(range(len(batch.numels))) else t[sub].contiguous()
                      for t in (batch.gate_bias.to(cdt), batch.head_bias.to(cdt)))
        # the tensors' addresses: the C loop needs no views of them
        ptrs = torch.tensor([[t.data_ptr() for t in lst] for lst in batch.sources(sub)], dtype=torch.int64)
        numels = torch.tensor([batch.numels[i] for i in sub], dtype=torch.int64)
        coefs = torch.tensor([batch.ib1[i] for i in sub] + [batch.sib2[i] for i in sub], dtype=cdt)
        if rule.cautious_scale > 0:  # the kept steps' multipliers after the corrections (lo_loop.h)
            coefs = torch.cat([coefs, torch.as_tensor(batch.cautious_of(sub, rule), dtype=cdt)])
        t_count = len(sub)
        task_lists = _split(numels.tolist(), nthreads)

        def call(tasks: torch.Tensor) -> None:
            fn(tasks.shape[0], tasks.data_ptr(), ptrs.data_ptr(), numels.data_ptr(), t_count, coefs.data_ptr(),
               w[0].data_ptr(), gb.data_ptr(), w[2].data_ptr(), hb.data_ptr(), ctypes.byref(consts))

        _run(task_lists, call)


def _split(numels: list[int], parts: int) -> list[torch.Tensor]:
    """Cut the concatenated coordinates into ``parts`` near-equal ranges of (tensor, begin, end)
    tasks, each range a multiple of SPLIT_QUANTUM where possible."""
    total = sum(numels)
    # At least 8192 coordinates (~0.1 ms of loop at the ~10 ns/coordinate measured on one core)
    # per thread: smaller steps are not worth a thread hand-off.
    parts = max(1, min(parts, -(-total // (64 * SPLIT_QUANTUM))))
    per = -(-total // parts)
    per = -(-per // SPLIT_QUANTUM) * SPLIT_QUANTUM
    return [torch.tensor(t, dtype=torch.int64).reshape(-1, 3) for t in chunk_plan(numels, per) if t]
