"""Side by side: the max-pool gradient scattered through flat NHWC offsets on
channels-last maps (``purer.losses._add_pooled_grad``) against the plain
per-plane scatter, in CPU training steps and evaluations.

Every teacher's pooled BN tap and every Conv4 block of the meta-model takes
this backward. Same bits either way (windows do not overlap); only the
memory walk differs. ``--micro`` first times the scatter alone at the
shapes of a 1-shot step (one thread, medians of 50).

    python benchmarks/bench_pool_grad.py --micro --steps 0 --eval-runs 0
    python benchmarks/bench_pool_grad.py --shot 1 --steps 40 --eval-runs 2
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from unittest import mock

import torch
import torch.nn.functional as F
from pairs import patched_code_main

from purer import losses


def plane_scatter(grad_x: torch.Tensor, indices: torch.Tensor, grad_pooled: torch.Tensor) -> None:
    grad_x.flatten(2).scatter_add_(2, indices.flatten(2), grad_pooled.flatten(2))


@contextlib.contextmanager
def nhwc_scatter(enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    with mock.patch.object(losses, "_add_pooled_grad", plane_scatter):
        yield


def micro() -> None:
    """The scatter alone, both paths, on channels-last maps of Conv4's blocks."""
    torch.set_num_threads(1)
    shapes = {"teacher block 1 (80 images)": (80, 32, 32), "teacher block 2": (80, 32, 16),
              "query block 1 (75 images)": (75, 32, 32), "support block 1 (5 images)": (5, 32, 32)}
    for name, (n, c, side) in shapes.items():
        x = torch.randn(n, c, side, side).contiguous(memory_format=torch.channels_last)
        pooled, indices = F.max_pool2d_with_indices(x, 2)
        grad_pooled, start = torch.randn_like(pooled), torch.randn_like(x)
        row = {"shape": name}
        for label, scatter in (("plane_ms", plane_scatter), ("nhwc_ms", losses._add_pooled_grad)):
            times = []
            for repeat in range(55):
                grad = start.clone()
                t0 = time.perf_counter()
                scatter(grad, indices, grad_pooled)
                if repeat >= 5:
                    times.append(time.perf_counter() - t0)
            row[label] = round(statistics.median(times) * 1e3, 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    if "--micro" in sys.argv:
        sys.argv.remove("--micro")
        threads = torch.get_num_threads()
        micro()
        torch.set_num_threads(threads)
    patched_code_main(__doc__.splitlines()[0], nhwc_scatter)
