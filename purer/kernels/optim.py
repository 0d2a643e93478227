"""Optimiser state that moves between eager and CUDA-graph execution.

A CUDA graph replays kernels with the arguments they were captured with, so
an optimiser inside a captured step must keep its step count and bias
corrections in device tensors (``capturable=True``) instead of Python
numbers. A run can also switch: a checkpoint written under a graph on a GPU
resumes eagerly on a CPU, and the other way round.
"""

from __future__ import annotations

import torch
from torch import Tensor


def make_capturable(optimizer: torch.optim.Optimizer, capturable: bool = True) -> None:
    """Turn ``capturable`` on (Adam and friends) or off again; existing step
    counts move to the parameters' device, or back to the CPU."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if isinstance(state.get("step"), Tensor):
                state["step"] = state["step"].to(param.device if capturable else "cpu", torch.float32)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict`` that keeps the optimiser's own
    ``capturable`` setting, whatever the checkpoint's was."""
    capturable = all(group.get("capturable", False) for group in optimizer.param_groups)
    optimizer.load_state_dict(state)
    make_capturable(optimizer, capturable)
