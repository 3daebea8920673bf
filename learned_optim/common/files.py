"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Each write goes to a temporary file in the target folder, is flushed and fsynced, renamed over
the target (``os.replace`` is atomic on POSIX and Windows), and the folder is fsynced so the
rename itself survives a crash. ``write_json`` writes strict JSON (NaN/inf become ``null``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "to_jsonable", "write_json"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a binary file that replaces ``path`` atomically once it returns.

    Args:
        path: the file to create or replace; its folder must exist.
        write: called with the open temporary file (e.g. ``lambda f: torch.save(obj, f)``).
    Returns:
        ``path`` as a ``Path``. On any exception the temporary file is removed and ``path`` is
        left as it was.

    Example::

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> atomic_write(p, lambda f: f.write(b"hi")).read_bytes()
        b'hi'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically (see ``atomic_write``)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """NaN/inf become ``None`` (strict JSON has neither); tuples become lists; keys become str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented strict JSON, atomically."""
    return atomic_write_text(path, json.dumps(to_jsonable(data), indent=1, allow_nan=False) + "\n")
