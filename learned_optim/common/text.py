"""Bundled text: Python's own standard-library sources as a byte-level corpus.

Every Python installation ships its standard library as ``.py`` files, so a language-modelling
corpus needs no download. The training and validation splits are disjoint sets of modules (a
held-out *file*, not a held-out slice of one file, so validation measures generalisation to code
the model never saw). The bytes depend on the Python version (the files change between
releases); the name of the version is part of ``corpus_id()`` so results can record it.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["TRAIN_MODULES", "VALIDATION_MODULES", "stdlib_dir", "stdlib_bytes", "corpus_id", "VOCAB_SIZE"]

# Byte-level: every byte is a token.
VOCAB_SIZE = 256

# Fixed lists (not a directory walk) so the corpus does not depend on what else is installed.
# Every module here exists in CPython 3.9-3.13.
TRAIN_MODULES = (
    "argparse.py", "dataclasses.py", "difflib.py", "textwrap.py", "inspect.py", "typing.py", "pathlib.py",
    "functools.py", "collections/__init__.py", "enum.py", "random.py", "statistics.py", "ast.py", "calendar.py",
    "configparser.py", "csv.py", "datetime.py", "decimal.py", "fractions.py", "gettext.py", "heapq.py", "pprint.py",
)
VALIDATION_MODULES = ("shutil.py", "tempfile.py", "string.py", "bisect.py", "copy.py", "operator.py")


def stdlib_dir() -> str:
    """The folder of this Python's standard-library sources (where the module names above are)."""
    return sysconfig.get_paths()["stdlib"]


@lru_cache(maxsize=4)
def stdlib_bytes(split: str = "train") -> Tensor:
    """The concatenated source bytes of ``TRAIN_MODULES`` (``split="train"``) or
    ``VALIDATION_MODULES`` (``split="validation"``) as a uint8 tensor (cached and shared: do not
    modify it in place). About 800 kB and 90 kB on CPython 3.11.

    Raises:
        ValueError: ``split`` is neither "train" nor "validation".
        FileNotFoundError: this Python has no standard-library sources (some minimal container
            images strip them); install the full Python distribution.

    Example::

        >>> data = stdlib_bytes("validation")
        >>> data.dtype, data.numel() > 10_000
        (torch.uint8, True)
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    root = stdlib_dir()
    chunks = []
    for name in TRAIN_MODULES if split == "train" else VALIDATION_MODULES:
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                chunks.append(f.read())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the text corpus needs Python's standard-library source {path!r}, which this installation "
                "lacks; use a Python distribution that ships its .py sources"
            ) from None
    return torch.frombuffer(bytearray(b"\n".join(chunks)), dtype=torch.uint8)


def corpus_id() -> str:
    """Which corpus the bytes are: the Python version they come from."""
    return f"cpython-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}-stdlib"
