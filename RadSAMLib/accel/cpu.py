"""What the CPU can do natively: its model name and the instruction-set flags that decide
the reduced-precision paths (one place; ``radsam bench-speed`` prints the same).

Flags come from ``/proc/cpuinfo`` (Linux). Elsewhere the set is empty, so no
reduced-precision path is ever chosen automatically there.
"""
from __future__ import annotations

import functools
import platform

# The flags reported with every speed figure.
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# Native int8 dot products (u8 x s8 -> s32): VNNI (AVX-512 or AVX) or AMX.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset]:
    """``(model name, flags)`` of the first CPU in ``/proc/cpuinfo``; ``(platform name,
    empty set)`` where that file cannot be read."""
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name":
                    name = val.strip()
                elif key.strip() == "flags":
                    flags = frozenset(val.split())
                    break
    except OSError:
        pass
    return name, flags


def cpu_flags() -> frozenset:
    return cpu_info()[1]


def has_native_int8() -> bool:
    """Whether the CPU has int8 dot-product units (VNNI or AMX)."""
    return any(f in cpu_flags() for f in INT8_FLAGS)


def cpu_description() -> str:
    """The CPU's model name and which of :data:`REPORTED_FLAGS` it has and lacks."""
    name, flags = cpu_info()
    have = [f for f in REPORTED_FLAGS if f in flags]
    lacks = [f for f in REPORTED_FLAGS if f not in flags] if flags else []
    return f"{name}; flags {' '.join(have) or 'n/a'}" + (f"; lacks {' '.join(lacks)}" if lacks else "")
