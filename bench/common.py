"""Helpers shared by the benchmark scripts (run as scripts; the repository root is on
sys.path)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (HiGHS prints debug lines from C++ in some builds)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
