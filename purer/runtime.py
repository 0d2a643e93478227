"""Process-wide settings: glibc's allocator (CPU speed) and strict fp32 on GPUs.

Why the allocator: a training step or a meta-test allocates and frees
feature maps of a few MiB to tens of MiB thousands of times. glibc serves
blocks that large with ``mmap`` and returns them on ``free``, so every new
map is page-faulted in again; keeping freed memory in the process removes
that (docs/results.md has the measured effect). Peak memory is unchanged (it
is what the process held anyway), only its return to the OS is deferred.

The ``purer`` command calls :func:`tune_allocator` once at start, and every
command that computes calls :func:`prepare_compute`; code that uses purer as
a library may call them too. ``PURER_MALLOC_TUNING=0`` leaves the allocator
alone. This module imports torch only inside the functions that need it, so
the command line starts without it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


# Loggers of PyTorch whose warnings tell a purer user nothing they can act on:
# torch.utils.cpp_extension says "No CUDA runtime is found, using CUDA_HOME=..."
# whenever torch.compile starts on a machine with CUDA files but no GPU.
QUIET_LOGGERS = ("torch.utils.cpp_extension",)


def quiet_warnings() -> None:
    """Keep PyTorch's meaningless warnings (:data:`QUIET_LOGGERS`) off the
    user's screen; their errors still show. Imports nothing."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def prepare_compute() -> None:
    """What every computing command sets before its first kernel."""
    strict_fp32()


def strict_fp32() -> bool:
    """Make ``fp32`` mean fp32 on NVIDIA GPUs: cuDNN convolutions without TF32.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for float32 convolutions
    by default. With it, two executions of the same math (teachers batched
    or one at a time) disagreed far beyond float rounding, in the memory's
    gradients and more in second-order meta-gradients, while the ECI step,
    bound by kernel launches, was no faster (docs/results.md).
    ``PURER_TF32=1`` keeps PyTorch's default. Returns whether TF32 was
    turned off.
    """
    import torch

    if os.environ.get("PURER_TF32", "0") == "1":
        return False
    torch.backends.cudnn.allow_tf32 = False
    return True


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles).

    Without either, PyTorch emulates bf16 arithmetic, many times slower than
    fp32; with them bf16 autocast can be faster than fp32 (docs/results.md).
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def warn_if_slow_bf16(option: str, device: torch.device | str) -> bool:
    """Warn that ``option = "bf16"`` will crawl on this CPU; True when it
    warned. GPUs and bf16-capable CPUs pass silently."""
    import torch

    if torch.device(device).type != "cpu" or cpu_has_fast_bf16():
        return False
    warnings.warn(f'{option} = "bf16" on a CPU without native bfloat16 (no AVX512-BF16 or AMX): '
                  'PyTorch emulates it, far slower than fp32; use "fp32"', stacklevel=3)
    return True
