"""Side by side: CPU training step and evaluation with and without the
memory-traffic shortcuts of Conv4's first blocks.

The shortcuts (all the same math, only rounding differs):

* moments from PyTorch's batch-norm statistics kernel instead of two sums
  (``purer.losses._moment_values``);
* a folded teacher's BN tap and the max-pool after it as one step with one
  backward buffer (``purer.teacher_view._fuse_taps_with_pools``);
* Conv4's BatchNorm-ReLU-max-pool computed on the pooled map
  (``purer.batch_norm.norm_relu_maxpool``), in MAML's meta step and at
  meta-test.

Both variants live in one process and alternate step by step (evaluation:
run by run), so the machine's drift hits both alike; the report gives each
variant's median and the median of the per-pair ratios.

    python benchmarks/bench_pooled.py --shot 1 --steps 40
    python benchmarks/bench_pooled.py --shot 5 --steps 40 --eval-runs 0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import purer_plugins.architectures as architectures
from pairs import patched_code_main

from purer import losses, teacher_view


@contextlib.contextmanager
def shortcuts(enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    with mock.patch.object(losses, "_moment_values", losses.summed_moments), \
            mock.patch.object(teacher_view, "_fuse_taps_with_pools", lambda traced: None), \
            mock.patch.object(architectures, "norm_relu_maxpool", lambda *args: None):
        yield


if __name__ == "__main__":
    patched_code_main(__doc__.splitlines()[0], shortcuts)
