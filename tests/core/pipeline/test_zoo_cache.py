"""Runs started together that need the same cached default zoo: one builds it,
the other waits for it, and both use the same verified teachers."""

from __future__ import annotations

import threading

import torch

from purer.config import PluginSection, ZooBuildOptions, ZooSection
from purer.pipeline.build import zoo_path
from purer.zoo import build as build_mod
from purer.zoo import load_teachers


def test_concurrent_builds_of_one_cached_zoo_never_train_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PURER_CACHE", str(tmp_path / "cache"))
    zoo = ZooSection(build=ZooBuildOptions(teachers=2, epochs=1, arch_kwargs={"width": 4},
                                           batch_size=64))
    data = PluginSection(name="synthetic-shapes", images_per_class=60)
    inside: list[int] = []
    most = [0]
    guard = threading.Lock()
    both = threading.Event()
    train = build_mod._train_teacher

    def watched(*args, **kwargs):
        with guard:
            inside.append(1)
            most[0] = max(most[0], len(inside))
            if len(inside) > 1:
                both.set()
        both.wait(timeout=1.0)  # time for the other run to start training too, if it may
        try:
            return train(*args, **kwargs)
        finally:
            with guard:
                inside.pop()

    monkeypatch.setattr(build_mod, "_train_teacher", watched)
    found: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            found[i] = zoo_path(zoo, data, torch.device("cpu"))
        except BaseException as exc:  # reported below
            found[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert found[0] == found[1], found
    assert most[0] == 1
    assert [t.name for t in load_teachers(found[0])] == ["t000", "t001"]
    assert (found[0] / ".complete").is_file()
