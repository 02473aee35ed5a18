"""
Keep camera-sized buffers in the heap instead of fresh mmap()s (a process-wide glibc setting).

Why: glibc serves allocations above its mmap threshold (128 KB, adaptive up to 32 MB) with a
fresh mapping each time, and every page of a fresh mapping faults on first touch. An 800x600
bgra8 frame (1.9 MB) is copied through several such buffers on its way through rclpy and Fast
DDS on each side. With these settings in both processes a raw image echo between two
processes over shared memory is markedly faster, at the median and more so in the tail
(measured: docs/bench.md#design-measurements). Costs a few tens of MB of retained heap at
most.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20     # glibc's upper bound for this setting on 64-bit
TRIM_THRESHOLD_BYTES = 128 << 20


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds; False where the C library is not glibc."""
    name = ctypes.util.find_library('c')
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):   # musl, macOS, ...: leave the defaults
        return False
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
