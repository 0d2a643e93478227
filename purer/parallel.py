"""Independent pieces of one step on several CPU threads that share the intra-op threads.

Why: on a CPU the ops of purer's steps are small (a 32 px Conv4 over 80-100
images), and splitting each op over both cores of a 2-core machine wastes
part of them on fork/join and on halves too small to keep a core busy. The
pieces of a step are independent, though: the 13 teachers' inversion losses,
the 4 episodes of a MAML meta step, the 600 tasks of a meta-test. Run on two
Python threads with one intra-op thread each (PyTorch releases the GIL inside
its kernels and its autograd engine), the pieces used the cores better: on
this project's 2-core VM the 13 teachers' forward and backward took 0.27 s
against 0.31 s with one teacher at a time on two intra-op threads, and a
second-order meta step 0.15 s against 0.20 s.

Results stay deterministic: every worker has the same number of intra-op
threads (one, on a 2-core CPU), so a piece's numbers do not depend on which
worker ran it, and results come back in input order for the caller to
combine in a fixed order. They differ from a run with all intra-op threads
on one piece only by float rounding, as any change of thread count does.

A piece must not share mutable Python state with another one running at the
same time: a module called through ``torch.func.functional_call`` is edited
in place for the call, so each worker gets its own copy of such a module
(``worker`` is the index to pick it by).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Annotated, Literal, TypeVar

import torch
from pydantic import Field

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")

# The type of a ``cpu_workers`` option: a count, or "auto".
Workers = Annotated[int, Field(ge=1)] | Literal["auto"]

# ``auto`` stops here: a meta step has 4 episodes, and on a bigger CPU each
# worker is better off with several intra-op threads than idle.
MAX_AUTO_WORKERS = 4


def resolve_workers(workers: Workers, device: torch.device) -> int:
    """How many worker threads ``workers`` means on ``device`` (1: no pool).

    ``auto`` is one worker per intra-op thread of the process on a CPU, at
    most :data:`MAX_AUTO_WORKERS`, and 1 on accelerators, whose kernels are
    asynchronous launches (batching and CUDA graphs are the tools there).
    """
    if device.type != "cpu":
        return 1
    if workers == "auto":
        return min(torch.get_num_threads(), MAX_AUTO_WORKERS)
    return max(1, int(workers))


@contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Run the block on ``count`` intra-op threads of this thread (``None``:
    as they are), then give the caller back its own count."""
    caller = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count is not None:
            torch.set_num_threads(caller)


def copy_sharing_tensors(obj: T, module: torch.nn.Module) -> T:
    """A deep copy of ``obj`` in which ``module``'s parameters and buffers are
    the original tensors, not copies: a worker's own module tree to run
    through ``functional_call``, at no memory cost."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(obj, tensors)


def _cpu_autocast() -> tuple[bool, torch.dtype]:
    """Whether CPU autocast is on in this thread, and its dtype (torch < 2.4
    spells these per device type)."""
    if hasattr(torch, "get_autocast_dtype"):
        return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


class WorkerPool:
    """A fixed set of threads sharing the process's intra-op threads: each
    gets ``torch.get_num_threads() // workers`` (at least one), fixed when
    the threads start.

    Threads start on the first :meth:`map` and stop with the process (or
    :meth:`close`). A deep copy of an object holding a pool gets a fresh,
    not yet started pool of the same size, so plugins that hold one can
    still be copied.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"WorkerPool: workers must be >= 1, got {workers}")
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._next_index = 0

    def _start_worker(self, threads: int) -> None:
        # PyTorch sets a thread's count lazily, from the process-wide number,
        # on its first parallel op; done now, so the count below sticks after
        # the caller restores the process-wide number.
        torch.get_num_threads()
        torch.set_num_threads(threads)
        with self._lock:
            self._local.index = self._next_index
            self._next_index += 1

    def _executor_started(self) -> ThreadPoolExecutor:
        if self._executor is None:
            caller_threads = torch.get_num_threads()
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="purer-worker",
                                                initializer=self._start_worker,
                                                initargs=(max(1, caller_threads // self.workers),))
            # Start every thread now (each runs its initializer once), then
            # restore the process-wide default that the workers' set_num_threads
            # moved, so threads created later elsewhere keep the caller's count.
            barrier = threading.Barrier(self.workers)
            list(self._executor.map(lambda _: barrier.wait(), range(self.workers)))
            torch.set_num_threads(caller_threads)
        return self._executor

    def map(self, fn: Callable[[int, Item], Result], items: Sequence[Item]) -> list[Result]:
        """``[fn(worker, item) for item in items]``, the calls spread over the
        workers; ``worker`` (``0 <= worker < workers``) says whose per-worker
        resources the call may use. Grad mode and CPU autocast, which are
        per thread in PyTorch, are carried into the workers."""
        if self.workers == 1 or len(items) < 2:
            return [fn(0, item) for item in items]
        grad = torch.is_grad_enabled()
        autocast, dtype = _cpu_autocast()

        def run(item: Item) -> Result:
            with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=dtype, enabled=autocast):
                return fn(self._local.index, item)

        return list(self._executor_started().map(run, items))

    def close(self) -> None:
        """Stop the threads (a later :meth:`map` starts new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
            self._next_index = 0

    def __deepcopy__(self, memo: dict) -> WorkerPool:
        return WorkerPool(self.workers)

    def __getstate__(self) -> dict:
        return {"workers": self.workers}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["workers"])
