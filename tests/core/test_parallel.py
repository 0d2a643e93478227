"""Worker threads: the pool itself, and that spreading teachers, episodes and
test tasks over threads gives the numbers of the one-at-a-time loops.

The suite runs with one intra-op thread (conftest.py), so every piece runs
single-threaded on both paths and the results must be bit-for-bit equal:
any mixing of workers' modules or graphs shows up as a difference.
"""

import copy
import threading

import pytest
import torch
from purer_plugins.learners import MAMLOptions
from purer_plugins.learners.maml import MAML

from purer.models import create_model
from purer.parallel import WorkerPool, resolve_workers
from purer.testing import random_episodes, setup_inverter
from purer.testing import tiny_teacher as make_teacher


def test_pool_keeps_order_and_gives_each_thread_its_own_index():
    pool = WorkerPool(2)
    seen: list[tuple[int, int]] = []
    both = threading.Barrier(2)

    def work(worker: int, item: int) -> int:
        seen.append((worker, threading.get_ident()))
        if item < 2:  # the first two items meet here, so each thread runs one of them
            both.wait(timeout=30)
        return item * item

    assert pool.map(work, range(8)) == [i * i for i in range(8)]
    by_thread = {}
    for worker, thread in seen:
        by_thread.setdefault(thread, set()).add(worker)
    assert sorted(w for ws in by_thread.values() for w in ws) == [0, 1]  # one index per thread
    assert all(len(ws) == 1 for ws in by_thread.values())
    pool.close()


def test_pool_carries_grad_mode_and_autocast_and_keeps_the_callers_threads():
    pool = WorkerPool(2)
    threads = torch.get_num_threads()
    with torch.no_grad():
        assert pool.map(lambda w, _: torch.is_grad_enabled(), range(2)) == [False, False]
    assert pool.map(lambda w, _: torch.is_grad_enabled(), range(2)) == [True, True]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtypes = pool.map(lambda w, _: (torch.ones(2, 2) @ torch.ones(2, 2)).dtype, range(2))
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert pool.map(lambda w, _: torch.get_num_threads(), range(2)) == [1, 1]
    assert torch.get_num_threads() == threads


def test_pool_raises_a_workers_error_and_copies_fresh():
    pool = WorkerPool(2)

    def fail(worker: int, item: int) -> int:
        if item == 3:
            raise ValueError("item 3")
        return item

    with pytest.raises(ValueError, match="item 3"):
        pool.map(fail, range(5))
    twin = copy.deepcopy(pool)
    assert twin.workers == 2 and twin is not pool
    assert twin.map(lambda w, i: i, range(3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        WorkerPool(0)


def test_auto_is_one_worker_per_thread_up_to_four_on_cpu_and_none_elsewhere():
    threads = torch.get_num_threads()
    try:
        for count, want in ((1, 1), (2, 2), (16, 4)):
            torch.set_num_threads(count)
            assert resolve_workers("auto", torch.device("cpu")) == want
    finally:
        torch.set_num_threads(threads)
    assert resolve_workers(3, torch.device("cpu")) == 3
    assert resolve_workers("auto", torch.device("meta")) == 1


def test_workers_share_the_callers_intra_op_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert WorkerPool(2).map(lambda w, _: torch.get_num_threads(), range(2)) == [2, 2]
        assert WorkerPool(3).map(lambda w, _: torch.get_num_threads(), range(3)) == [1, 1, 1]
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)


def test_zero_workers_is_a_config_error():
    from purer.errors import ConfigError
    from purer.plugins import get_host

    for kind, name in (("inverter", "deepinv"), ("meta_learner", "maml")):
        with pytest.raises(ConfigError, match="cpu_workers"):
            get_host().create(kind, name, {"cpu_workers": 0}, kind)


def make_inverter(teachers, **options):
    return setup_inverter("deepinv", teachers, **options)


def test_inversion_on_two_workers_equals_one_at_a_time():
    teachers = [make_teacher(k, [2 * k, 2 * k + 1]) for k in range(5)]
    alone = make_inverter(teachers, cpu_workers=1)
    threaded = make_inverter(teachers, cpu_workers=2)
    assert alone.pool.workers == 1 and threaded.pool.workers == 2
    # the second worker runs its own copy of the shared traced module, on the same teacher tensors
    assert threaded.worker_views[1][0].graph_module is not threaded.views[0].graph_module
    assert threaded.worker_views[1][0].state is threaded.views[0].state
    assert all(a is b for a, b in zip(threaded.worker_views[1][0].graph_module.parameters(),
                                      threaded.views[0].graph_module.parameters()))
    for _ in range(3):
        logged_alone, logged_threaded = alone.step(None, {}), threaded.step(None, {})
        assert all(torch.equal(logged_alone[k], logged_threaded[k]) for k in logged_alone)
    for a, b in zip(alone.memory, threaded.memory):
        assert torch.equal(a, b)


def test_hooked_teachers_stay_on_one_worker():
    teachers = [make_teacher(0, [0, 1]), make_teacher(1, [2, 3])]
    assert make_inverter(teachers, cpu_workers=2, fold_batch_norm=False).pool.workers == 1


def _maml(workers: int) -> MAML:
    torch.manual_seed(0)
    meta = MAML(MAMLOptions(cpu_workers=workers, inner_steps=2, inner_lr=0.1))
    meta.setup(create_model("conv4", num_classes=5, img_size=16).double(), torch.device("cpu"))
    return meta


def _plain_episodes():
    episodes = random_episodes(count=4)
    return type(episodes)(episodes.support.detach(), episodes.support_labels,
                          episodes.query.detach(), episodes.query_labels, None)


def test_meta_step_on_two_workers_equals_the_loop():
    """Same outer loss, accuracy and Adam trajectory; the per-episode gradients
    are summed in another order than one backward of the summed loss does,
    hence float64 and a tolerance far below any mix-up of episodes."""
    episodes = _plain_episodes()
    alone, threaded = _maml(1), _maml(2)
    for _ in range(3):
        a, b = alone.meta_step(episodes), threaded.meta_step(episodes)
        assert torch.allclose(a.loss, b.loss, rtol=1e-12) and torch.equal(a.accuracy, b.accuracy)
    for (name, p), q in zip(alone.params().items(), threaded.params().values()):
        if name.endswith("conv.bias"):  # before a batch-statistics BN: gradient ~1e-17, Adam's step noise
            continue
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-12), name


def test_meta_test_on_two_workers_equals_the_loop():
    episodes = _plain_episodes()
    alone, threaded = _maml(1), _maml(2)
    with torch.no_grad():
        expected = alone.adapt_and_predict(episodes.support, episodes.support_labels, episodes.query)
        got = threaded.adapt_and_predict(episodes.support, episodes.support_labels, episodes.query)
    assert torch.equal(expected, got)


def test_hooks_on_the_meta_model_keep_the_loop_so_they_fire():
    episodes = _plain_episodes()
    threaded = _maml(2)
    calls = []
    handle = threaded.model.blocks[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        threaded.meta_step(episodes)
    finally:
        handle.remove()
    assert len(calls) == 4 * 3  # 4 episodes: 2 inner forwards and 1 query forward each


def test_workers_never_run_the_meta_models_own_module(monkeypatch):
    """functional_call swaps a module's tensors for the duration of a call: a
    worker running ``meta.model`` would hand its adapted tensors to another
    worker that reads ``meta.params()`` meanwhile (a race that mixed episodes'
    graphs). Each worker must run its own copy, and only that one."""
    import purer_plugins.learners.maml as maml_module

    meta = _maml(2)
    ran: list[tuple[int, int]] = []
    real = maml_module.functional_call

    def recording(module, params, args):
        ran.append((threading.get_ident(), id(module)))
        return real(module, params, args)

    monkeypatch.setattr(maml_module, "functional_call", recording)
    episodes = _plain_episodes()
    meta.meta_step(episodes)
    with torch.no_grad():
        meta.adapt_and_predict(episodes.support, episodes.support_labels, episodes.query)
    modules_of: dict[int, set[int]] = {}
    for thread, module in ran:
        modules_of.setdefault(thread, set()).add(module)
    assert modules_of and threading.get_ident() not in modules_of  # everything ran on the workers
    replicas = {id(r) for r in meta.replicas}
    assert all(len(modules) == 1 and modules <= replicas for modules in modules_of.values())
    used = [next(iter(modules)) for modules in modules_of.values()]
    assert len(set(used)) == len(used)  # never one copy for two threads
    # the copies are module trees only: the tensors are the meta-model's own
    for replica in meta.replicas:
        for (name, mine), theirs in zip(meta.model.named_parameters(), replica.parameters()):
            assert mine is theirs, name
