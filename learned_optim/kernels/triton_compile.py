"""Compiling the Triton kernel for real GPUs without one: registers per thread and spills.

Triton's NVIDIA backend ships ``ptxas`` and ``cuobjdump``, so ``triton.compile`` turns
``_triton_update.lstm_update_kernel`` into PTX and a cubin for any ``sm_XY`` on a CPU-only
machine. ``cuobjdump -res-usage`` then reports the registers per thread and the local memory
(spills) of that cubin. ``tests/test_triton_compile.py`` checks that the launches the kernel uses
compile with no local memory; ``python -m learned_optim.kernels.triton_compile`` rewrites the
table in ``benchmarks/results/triton_compile.md`` and ``.json`` that ``_triton_update.LAUNCH``
was chosen from.

The kernel module must be the compiled one, not Triton's interpreter: with ``TRITON_INTERPRET=1``
in the environment (the kernel tests set it) run this in a fresh process without it
(``compile_in_subprocess``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

__all__ = ["VARIANTS", "nvidia_tools", "compile_variant", "compile_all", "compile_in_subprocess", "write_report"]

# (param dtype, LSTM state dtype) by name: what the kernel is launched with (fp64 parameters
# have fp64 state; bf16 state only with fp32 maths).
DTYPE_PAIRS = [("float32", "float32"), ("bfloat16", "float32"), ("float16", "float32"),
               ("float32", "bfloat16"), ("bfloat16", "bfloat16"), ("float16", "bfloat16"), ("float64", "float64")]
# (BLOCK, num_warps): 4, 2 and 1 coordinates per thread.
LAUNCHES = [(1024, 8), (512, 8), (512, 4), (256, 8), (256, 4)]
CAPABILITIES = [80, 90]
VARIANTS = [(cc, p, s, b, w) for cc in CAPABILITIES for p, s in DTYPE_PAIRS for b, w in LAUNCHES]

_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def nvidia_tools() -> tuple[str, str] | None:
    """Paths of Triton's bundled ``ptxas`` and ``cuobjdump``, or None without its NVIDIA backend."""
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        return None
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas, cuobjdump = bin_dir / "ptxas", bin_dir / "cuobjdump"
    if ptxas.exists() and cuobjdump.exists():
        return str(ptxas), str(cuobjdump)
    found = shutil.which("ptxas"), shutil.which("cuobjdump")
    return found if all(found) else None


def _signature(fn, cdt: str, constexprs: dict) -> dict[str, str]:
    ptr = {"ptrs": "*i64", "blocks": "*i64", "numels": "*i64", "flags": "*i32", "coefs": f"*{cdt}",
           "cscales": f"*{cdt}", "w_ptr": f"*{cdt}", "b_ptr": f"*{cdt}", "hw_ptr": f"*{cdt}", "hb_ptr": f"*{cdt}",
           "T": "i32", "NB": "i32"}
    return {name: "constexpr" if name in constexprs else ptr.get(name, "fp64") for name in fn.arg_names}


def compile_variant(cc: int, p_dtype: str, s_dtype: str, block: int, num_warps: int, v2: bool = False, *,
                    hidden: int = 4, features: int = 2) -> dict[str, Any]:
    """Compile the kernel for ``sm_<cc>``; registers per thread, local/stack bytes and the time taken.
    ``v2``: the kernel of a format version 2 rule (sign equivariance, per-tensor biases, the cautious mask
    and its per-tensor rescale on)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _triton_update as kt

    if kt.INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET=1 is set: compile in a fresh process (compile_in_subprocess)")
    tools = nvidia_tools()
    if tools is None:
        raise RuntimeError("Triton's NVIDIA backend (ptxas, cuobjdump) is not installed")
    fn = kt.lstm_update_kernel
    tlt = {"float32": tl.float32, "float64": tl.float64, "bfloat16": tl.bfloat16, "float16": tl.float16}
    cdt = "fp64" if p_dtype == "float64" else "fp32"
    m_dt = "float64" if p_dtype == "float64" else "float32"
    constexprs = dict(P_DT=tlt[p_dtype], G_DT=tlt[p_dtype], M_DT=tlt[m_dt], S_DT=tlt[s_dtype],
                      CDT=tlt["float64" if cdt == "fp64" else "float32"], H=hidden,
                      HP=triton.next_power_of_2(hidden), F=features, KIND0=0, KIND1=1, MAXIMIZE=False, BLOCK=block,
                      SIGN_EQ=bool(v2), PER_TENSOR_BIAS=bool(v2), CAUTIOUS=bool(v2), RESCALE=bool(v2))
    src = ASTSource(fn=fn, signature=_signature(fn, cdt, constexprs), constexprs=constexprs)
    t0 = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps})
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        out = subprocess.run([tools[1], "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    match = _RES.search(out)
    if match is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{out}")
    regs, stack, shared, local = map(int, match.groups())
    return dict(cc=cc, param=p_dtype, state=s_dtype, block=block, num_warps=num_warps, v2=bool(v2), registers=regs,
                stack=stack, local=local, shared=shared, coords_per_thread=block // (32 * num_warps),
                compile_s=round(seconds, 2))


def compile_all(variants: Iterable[tuple] = VARIANTS) -> list[dict[str, Any]]:
    return [compile_variant(*v) for v in variants]


def compile_in_subprocess(variants: Iterable[tuple] = VARIANTS, timeout: float = 600) -> list[dict[str, Any]]:
    """``compile_all`` in a fresh interpreter with Triton's interpreter off."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, sys; from learned_optim.kernels import triton_compile as tc; "
            "print(json.dumps(tc.compile_all([tuple(v) for v in json.loads(sys.argv[1])])))")
    res = subprocess.run([sys.executable, "-c", code, json.dumps([list(v) for v in variants])], env=env,
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"compiling the Triton kernel failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_report(rows: list[dict[str, Any]], directory: Path) -> None:
    """``triton_compile.json`` (the rows) and ``triton_compile.md`` (one table) in ``directory``."""
    import triton

    from . import _triton_update as kt

    directory.mkdir(parents=True, exist_ok=True)
    chosen = {(str(p).removeprefix("torch."), str(s).removeprefix("torch.")): v for (p, s), v in kt.LAUNCH.items()}
    meta = {"triton": triton.__version__, "command": "python -m learned_optim.kernels.triton_compile",
            "hidden_size": 4,
            "features": 2, "rows": rows}
    (directory / "triton_compile.json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [
        "# Triton kernel: registers per thread and spills, compiled without a GPU",
        "",
        f"`python -m learned_optim.kernels.triton_compile` (Triton {triton.__version__}, its bundled "
        "ptxas; `cuobjdump -res-usage` on each cubin). H = 4, F = 2. `local` and `stack` are local "
        "memory in bytes per thread: a non-zero stack is spilled registers (fp64 at 2 or more "
        "coordinates per thread); every chosen launch shows 0. `*`: the launch `_triton_update.LAUNCH` uses for "
        "that dtype pair. Registers decide how many 32-thread warps fit on an SM (65536 registers "
        "per SM on sm_80 and sm_90). The launches were timed on one H200 (sm_90): "
        "benchmarks/results/gpu-h200/README.md.",
        "",
        "| sm | param | LSTM state | BLOCK | warps | coords/thread | registers | local | stack | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "*" if chosen.get((r["param"], r["state"])) == (r["block"], r["num_warps"]) else ""
        lines.append(f"| {r['cc']} | {r['param']} | {r['state']} | {r['block']}{mark} | {r['num_warps']} | "
                     f"{r['coords_per_thread']} | {r['registers']} | {r['local']} | {r['stack']} | {r['compile_s']} |")
    (directory / "triton_compile.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    write_report(compile_all(), out)
    print(f"wrote {out / 'triton_compile.md'}")
