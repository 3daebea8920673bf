"""Building the C loop of ``kernels/cpu.py``: compiler, flags, the cache, and build errors.

The sources are plain C files shipped in ``learned_optim/kernels/csrc`` (``lo.c`` includes the
rest). One library is built per network shape, the shape given on the command line
(``-DHIDDEN=4 -DFEATURES=2``); everything else is chosen by the preprocessor (the compute and
state types of each loop in ``lo.c``, the vector layer in ``lo_avx512.h`` or ``lo_avx2.h`` by
what ``-march`` enables).

Cache: ``$XDG_CACHE_HOME/learned_optim/lo_cpu_h<H>_f<F>_<key>/`` (``~/.cache`` without
XDG_CACHE_HOME), ``key`` a hash of the sources, the compiler, the flags and the CPU. Each entry
keeps a copy of the exact sources it was compiled from, the command (``build.sh``, runnable by
hand) and the compiler's output (``build.log``), next to ``liblo.so``; so a compiler message
names files that exist, and a failed build can be inspected and rerun.

``LEARNED_OPTIM_C_MARCH`` (read once, at import) replaces ``-march=native``: e.g. ``x86-64-v3``
builds the AVX2 loop on an AVX-512 machine (the tests and the speed benchmark do), or a baseline
for a cluster whose nodes differ from the build host. ``CC`` names the compiler (default gcc,
else cc).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

__all__ = ["SOURCE_DIR", "BuildError", "cflags", "cache_dir", "build"]

SOURCE_DIR = Path(__file__).with_name("csrc")

# -ffast-math lets GCC vectorize the portable loop (its clamps become min/max, products contract
# to FMAs); -fno-finite-math-only keeps NaN semantics, so a NaN in the state stays NaN as in the
# torch paths (tested). Every exp is inline (lo_expf, lo_exp, v_exp2): no libmvec. Linking
# without -ffast-math keeps crtfastmath.o out of the library, which would otherwise switch the
# whole process to flush-denormals-to-zero when the library loads.
CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fPIC", "-std=c11")
LDFLAGS = ("-shared", "-lm")

MARCH = os.environ.get("LEARNED_OPTIM_C_MARCH", "").strip()


class BuildError(RuntimeError):
    """The compiler failed; the message has its whole output and the entry's directory."""


def cflags() -> list[str]:
    """CFLAGS, with -march from LEARNED_OPTIM_C_MARCH if set."""
    return [f"-march={MARCH}" if (f.startswith("-march=") and MARCH) else f for f in CFLAGS]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "learned_optim"


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return ""


def _sources() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SOURCE_DIR.iterdir()) if p.suffix in (".c", ".h")}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(hidden_size: int, num_features: int, *, extra_cflags: Sequence[str] = ()) -> Path:
    """The path of the library for this network shape, compiled unless the cache has it.

    ``extra_cflags`` are appended to the compile command (and the cache key); tests use them.
    Raises ``BuildError`` (the compiler's whole output, which names the entry's own copy of the
    sources) or ``RuntimeError`` when there is no compiler.
    """
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH")
    sources = _sources()
    shape = [f"-DHIDDEN={int(hidden_size)}", f"-DFEATURES={int(num_features)}"]
    flags = [*cflags(), *shape, *extra_cflags]
    h = hashlib.sha256()
    for part in (*(n.encode() + b"\0" + d for n, d in sources.items()), cc.encode(), *map(str.encode, flags),
                 *map(str.encode, LDFLAGS), _cpu_id().encode()):
        h.update(part + b"\0")
    entry = cache_dir() / f"lo_cpu_h{int(hidden_size)}_f{int(num_features)}_{h.hexdigest()[:20]}"
    lib = entry / "liblo.so"
    if lib.exists():
        return lib
    entry.mkdir(parents=True, exist_ok=True)
    for name, data in sources.items():  # identical bytes from concurrent builders: harmless
        _write_atomic(entry / name, data)
    obj, so_tmp = entry / f"lo.{os.getpid()}.o", entry / f"liblo.{os.getpid()}.so"
    commands = [[cc, *flags, "-c", str(entry / "lo.c"), "-o", str(obj)], [cc, str(obj), "-o", str(so_tmp), *LDFLAGS]]
    _write_atomic(entry / "build.sh", ("#!/bin/sh\nset -e\n" + "".join(
        shlex.join(c).replace(f".{os.getpid()}.", ".") + "\n" for c in commands)).encode())
    log = []
    try:
        for cmd in commands:
            res = subprocess.run(cmd, capture_output=True, text=True)
            log.append(f"$ {shlex.join(cmd)}\n{res.stdout}{res.stderr}")
            if res.returncode != 0:
                _write_atomic(entry / "build.log", "".join(log).encode())
                raise BuildError(
                    f"the C compiler failed (exit {res.returncode}) building {entry / 'lo.c'}; "
                    f"sources, command (build.sh) and this output (build.log) are kept in {entry}.\n"
                    f"$ {shlex.join(cmd)}\n{res.stdout}{res.stderr}"
                )
        _write_atomic(entry / "build.log", "".join(log).encode())
        os.replace(so_tmp, lib)  # atomic: concurrent builders never load a partial file
    finally:
        for tmp in (obj, so_tmp):
            tmp.unlink(missing_ok=True)
    return lib
