"""glibc malloc settings for the long multithreaded jobs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before any thread starts. glibc gives allocating threads
    arenas of their own (up to eight per core); the decoders' and the clip reader's threads
    leave them fragmented as a shard goes on, so the job's peak would grow with its length. Two
    keep it flat (benchmarks/bench_transcribe_memory.py). Nothing is done off glibc or when
    the user set MALLOC_ARENA_MAX. True when the cap was set."""
    if "MALLOC_ARENA_MAX" in os.environ or not (name := ctypes.util.find_library("c")):
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc
        return False
