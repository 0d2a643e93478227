"""One run across processes on ``torch.distributed`` (docs/distributed.md).

A :class:`World` says which process this is. Started by ``torchrun`` (or
``purer run --nproc N``, which starts the same launcher), the environment
names the rank and size, and :func:`init_world` joins the process group:
gloo on the CPU, NCCL on CUDA. Without torchrun there is no process group,
the world has one member, and every helper here is the identity, so a
one-process run executes exactly what it did before distribution existed.

The helpers are collectives: every rank must call them in the same order.
The engine keeps that order by deciding everything that steers control
flow (the switch, validation, checkpoints, interrupts) from values that are
identical on every rank.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from purer.errors import ConfigError

# How long a collective may wait for a peer before the process group gives
# up: a rank that died without taking the job down must not hang the others.
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` (``size == 1``:
    no process group, every collective is the identity)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes metrics, checkpoints, pictures and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # ------------------------------------------------------------ collectives
    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum over ranks (a new tensor; no autograd)."""
        if not self.distributed:
            return tensor
        out = tensor.detach().clone()
        torch.distributed.all_reduce(out)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. an interrupt)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self._device())
        torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def gather_rows(self, tensor: Tensor, counts: list[int] | None = None) -> list[Tensor]:
        """Every rank's ``tensor`` (equal trailing shapes, any number of rows),
        differentiable: the gradient of each piece flows back to the rank that
        owns it, summed over the ranks that used it. ``counts``: each rank's
        number of rows, when known (else they are exchanged first)."""
        if not self.distributed:
            return [tensor]
        if counts is None:
            counts = [int(c) for c in self.gather_objects(int(tensor.shape[0]))]
        return list(_GatherRows.apply(self, counts, tensor))

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable; tensors should be on the CPU)."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, value)
        return out

    def broadcast_object(self, value: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def check_same(self, what: str, text: str) -> None:
        """Stop at start when ranks disagree on ``what`` (e.g. the
        configuration): a one-line error naming the ranks that differ."""
        if not self.distributed:
            return
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        digests = self.gather_objects(digest)
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise ConfigError(f"{what}: differs between ranks (rank 0 and rank(s) "
                              f"{', '.join(map(str, odd))}); start every rank with the same "
                              "configuration")

    def split(self, count: int) -> tuple[int, int]:
        """This rank's contiguous share ``[start, stop)`` of ``count`` items
        (the first ``count % size`` ranks take one more)."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def _device(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


class _GatherRows(torch.autograd.Function):
    """All-gather of row blocks of different lengths, with a backward that
    sums each block's gradient over the ranks and keeps this rank's. Written
    with all_reduce alone: gloo has no reduce-scatter."""

    @staticmethod
    def forward(ctx: Any, world: World, counts: list[int], tensor: Tensor) -> tuple[Tensor, ...]:
        ctx.world, ctx.counts = world, counts
        longest = max(counts)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        pieces = [torch.empty_like(padded) for _ in counts]
        torch.distributed.all_gather(pieces, padded.contiguous())
        return tuple(p[:c] for p, c in zip(pieces, counts))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, None, Tensor]:
        world, counts = ctx.world, ctx.counts
        longest = max(counts)
        stacked = grads[0].new_zeros((len(counts), longest, *grads[0].shape[1:]))
        for r, (g, c) in enumerate(zip(grads, counts)):
            if g is not None:
                stacked[r, :c] = g
        torch.distributed.all_reduce(stacked)
        return None, None, stacked[world.rank, : counts[world.rank]]


def launched() -> bool:
    """Whether torchrun (or ``purer run --nproc``) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_world(device: str = "auto") -> World:
    """Join the process group torchrun set up (once per process: torch keeps
    it); the one-process world otherwise. ``device``: the run's device
    setting, for the backend (NCCL for CUDA, gloo otherwise).
    ``PURER_DIST_TIMEOUT`` (seconds) bounds how long a collective waits for
    a peer."""
    if not launched():
        return World()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if size > 1 and not torch.distributed.is_initialized():
        cuda = device != "cpu" and device.startswith(("cuda", "auto")) and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        timeout = float(os.environ.get("PURER_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                             timeout=timedelta(seconds=timeout))
    return World(rank, size, local_rank)


def finish_world() -> None:
    """Leave the process group (at the end of a command)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def local_device(device: torch.device, world: World) -> torch.device:
    """Each rank's own GPU: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and world.distributed and device.index in (None, 0):
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return device


def balance(costs: list[float], ranks: int) -> list[list[int]]:
    """Indices of the items each rank owns, the largest first to the least
    loaded rank (ties: the lower rank), so the ranks' total costs stay close;
    every rank gets an item when there are at least ``ranks`` of them.
    Deterministic: every rank computes the same assignment."""
    loads = [0.0] * ranks
    owned: list[list[int]] = [[] for _ in range(ranks)]
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        r = min(range(ranks), key=lambda r: (loads[r], r))
        loads[r] += costs[k]
        owned[r].append(k)
    return [sorted(o) for o in owned]


def forward_cost(model: torch.nn.Module, size: int) -> float:
    """Multiply-adds of one forward pass of ``model`` on one ``size`` x
    ``size`` image, counted on its convolutions and linear layers (a
    ResNet-18 weighs what it costs, not one teacher like a Conv4)."""
    total = [0.0]

    def count(module: torch.nn.Module, inputs: Any, output: Tensor) -> None:
        weight = getattr(module, "weight", None)
        if weight is None or not isinstance(output, Tensor):
            return
        if isinstance(module, torch.nn.Conv2d):
            total[0] += weight.numel() * output.shape[-1] * output.shape[-2]
        elif isinstance(module, torch.nn.Linear):
            total[0] += weight.numel()

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        param = next(model.parameters(), None)
        like = param if param is not None else torch.zeros(())
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=like.device, dtype=like.dtype))
    finally:
        for h in handles:
            h.remove()
    return total[0] or float(sum(p.numel() for p in model.parameters()) * size * size)
