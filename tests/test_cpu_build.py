"""Building the C loop (learned_optim.kernels.cbuild): the cache entry keeps the sources and the
command, and a compiler error reaches the user whole, naming files that exist."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest

from learned_optim.kernels import cbuild, cpu

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")


def _c_paths(message: str) -> list[Path]:
    return [Path(p) for p in re.findall(r"(/\S+?\.[ch]):\d+", message)]


def test_sources_are_c_files_shipped_with_the_package():
    names = {p.name for p in cbuild.SOURCE_DIR.iterdir()}
    assert {"lo.c", "lo_common.h", "lo_loop.h", "lo_simd.h", "lo_simd_loop.h", "lo_avx512.h", "lo_avx2.h"} <= names


@needs_gcc
def test_build_error_names_existing_files_and_is_whole(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # a shape macro that is not a number: the error is in the loop's own source
    with pytest.raises(cbuild.BuildError) as info:
        cbuild.build(4, 2, extra_cflags=["-DHIDDEN=bogus_hidden"])
    msg = str(info.value)
    paths = _c_paths(msg)
    assert paths, msg
    assert all(p.exists() and tmp_path in p.parents for p in paths), paths
    entry = paths[0].parent
    assert (entry / "build.sh").exists() and (entry / "lo.c").exists()
    log = (entry / "build.log").read_text()
    assert "bogus_hidden" in msg and log.strip().splitlines()[-1] in msg  # the whole output, not a tail
    assert not (entry / "liblo.so").exists()


@needs_gcc
def test_failed_build_warns_once_with_the_whole_message(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu, "_libs", {})
    monkeypatch.setattr(cpu, "_failed", False)
    monkeypatch.setattr(cpu, "ENABLED", True)
    flags = cbuild.cflags()
    # the shared header's include guard predefined: lo_common.h is skipped, so lo_rule is unknown
    monkeypatch.setattr(cbuild, "cflags", lambda: [*flags, "-DLO_COMMON_H"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert not cpu.available(4, 2)
        assert not cpu.available(3, 1)  # no second try
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 1 and "lo_rule" in msgs[0] and "-DLO_COMMON_H" in msgs[0], msgs
    assert _c_paths(msgs[0]) and all(p.exists() for p in _c_paths(msgs[0]))


@needs_gcc
def test_cache_entry_keeps_sources_and_command(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = cbuild.build(2, 1)
    entry = lib.parent
    assert lib.name == "liblo.so" and entry.parent == tmp_path / "learned_optim"
    for src in cbuild.SOURCE_DIR.iterdir():
        assert (entry / src.name).read_bytes() == src.read_bytes()
    cmd = (entry / "build.sh").read_text()
    assert "-DHIDDEN=2" in cmd and "-DFEATURES=1" in cmd and str(entry / "lo.c") in cmd
    assert cbuild.build(2, 1) == lib  # cached
    assert sorted(p.name for p in entry.iterdir() if p.name.startswith(".") or p.suffix == ".o") == []
