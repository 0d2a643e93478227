"""Process-wide settings: glibc's allocator (CPU speed) and strict fp32 on GPUs.

Why: a training step or a meta-test allocates and frees feature maps of a few
MiB to tens of MiB thousands of times. glibc serves blocks that large with
``mmap`` and returns them on ``free``, so every new map is page-faulted in
again (about 2.5 us per 4 KiB page in this project's VMs): on a 2-core CPU
a 600-task CIFAR-FS evaluation took 12.1 s with glibc's defaults and 7.1 s
with this tuning. Keeping freed memory in the
process removes that; peak memory is unchanged (it is what the process held
anyway), only its return to the OS is deferred.

The ``purer`` command and the benchmarks call :func:`tune_allocator` once at
start; code that uses purer as a library may call it too. Set
``PURER_MALLOC_TUNING=0`` to leave the allocator alone.

:func:`strict_fp32` (called next to it) turns off cuDNN's TF32 convolutions,
which PyTorch enables by default: see its docstring for what was measured.

:func:`warn_if_slow_bf16` is called where a ``bf16`` option takes effect.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

import torch

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's maximum: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed heap instead of returning it
TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps


def tune_allocator() -> bool:
    """Keep freed blocks in the process (glibc only); True when applied.

    A no-op elsewhere (macOS, musl) and when ``PURER_MALLOC_TUNING=0``.
    Safe to call more than once.
    """
    if os.environ.get("PURER_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (e.g. musl)
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))


def strict_fp32() -> bool:
    """Make ``fp32`` mean fp32 on NVIDIA GPUs: cuDNN convolutions without TF32.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for float32 convolutions
    by default. On an H200, with TF32 the teachers' batched and one-at-a-time
    paths, the same math, gave memory gradients 1.4 % apart and second-order
    meta-gradients 4.9 % apart; without it 5e-7 and 2e-3. The ECI step took
    the same time either way (54.6 vs 55.2 ms: it is bound by kernel
    launches, not arithmetic). ``PURER_TF32=1`` keeps PyTorch's default.
    Returns whether TF32 was turned off.
    """
    if os.environ.get("PURER_TF32", "0") == "1":
        return False
    torch.backends.cudnn.allow_tf32 = False
    return True


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles).

    Without either, PyTorch emulates bf16 arithmetic: on an AVX2 AMD EPYC a
    bf16 matrix product ran at 0.8 GFLOP/s against 60 GFLOP/s in fp32, and a
    Conv4 first convolution took 127 ms against 4 ms. With AMX (the Intel
    Xeon of earlier measurements) bf16 autocast was up to 2.5x *faster*.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def warn_if_slow_bf16(option: str, device: torch.device | str) -> bool:
    """Warn that ``option = "bf16"`` will crawl on this CPU; True when it
    warned. GPUs and bf16-capable CPUs pass silently."""
    if torch.device(device).type != "cpu" or cpu_has_fast_bf16():
        return False
    warnings.warn(f'{option} = "bf16" on a CPU without native bfloat16 (no AVX512-BF16 or AMX): '
                  'PyTorch emulates it, far slower than fp32 (a Conv4 convolution 30x on an AVX2 '
                  'EPYC); use "fp32"', stacklevel=3)
    return True
