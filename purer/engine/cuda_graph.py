"""Replay the device work of an outer step from CUDA graphs (``train.cuda_graph``).

Why: on a GPU a Conv4 outer step is a few thousand small kernels, and the
host cannot issue them as fast as the GPU runs them (docs/results.md has
the measurements). A CUDA graph records the kernels of one step once and
replays them with a single launch.

What makes the step replayable: its shapes never change, and everything
random is drawn on the CPU before the step (``ECITrainer.draw``) and copied
into fixed device buffers, so a replay computes exactly the step that eager
execution would compute on the same draws. The step holds no host sync: its
numbers come back as 0-d tensors, read once after the replay. Both
optimisers must be capturable (``capturable=True`` Adam,
``purer.kernels.optim.make_capturable``), which the built-in inverter and
meta-learner turn on when asked. The switch's scale
is a constant of the captured code, so there is one graph per scale value
(two for the gradient switch: off and lambda).

Each graph is captured after ``warmup`` eager steps of its kind, run on a
side stream as PyTorch's capture rules ask; the capture itself runs nothing,
so the capturing step is then replayed. If a capture fails (an op that
syncs with the host, say), the run warns once and goes on eagerly.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

DeviceStep = Callable[[float, dict[str, Tensor]], dict[str, Tensor]]


class GraphedStep:
    """Runs ``step(scale, draws)`` eagerly until it can replay a captured graph."""

    def __init__(self, step: DeviceStep, device: torch.device, warmup: int = 2) -> None:
        self.step, self.device, self.warmup = step, device, warmup
        self.graphs: dict[float, tuple[torch.cuda.CUDAGraph, dict[str, Tensor], dict[str, Tensor]]] = {}
        self.seen: Counter[float] = Counter()
        self.failed = False
        self.stream = torch.cuda.Stream(device)

    def __call__(self, scale: float, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """``draws``: this step's CPU tensors; returns the step's numbers (device tensors,
        valid until the next call)."""
        if scale in self.graphs:
            graph, inputs, outputs = self.graphs[scale]
            for name, value in draws.items():
                inputs[name].copy_(value)
            graph.replay()
            return outputs
        inputs = {name: value.to(self.device) for name, value in draws.items()}
        if self.failed or self.seen[scale] < self.warmup:
            self.seen[scale] += 1
            return self._eager(scale, inputs)
        return self._capture_and_replay(scale, inputs)

    def _eager(self, scale: float, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.failed:
            return self.step(scale, inputs)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            outputs = self.step(scale, inputs)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return outputs

    def _capture_and_replay(self, scale: float, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(graph):
                outputs = self.step(scale, inputs)
        except Exception as exc:  # keep the run going: this step, and all later ones, eagerly
            self.failed = True
            warnings.warn(f"train.cuda_graph: capture failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}); running eagerly", stacklevel=3)
            torch.cuda.synchronize(self.device)
            return self.step(scale, inputs)
        self.graphs[scale] = (graph, inputs, outputs)
        graph.replay()
        return outputs
