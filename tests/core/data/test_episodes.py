"""Few-shot tasks: reproducible, vectorised, and every image carries its label."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import SHARED_DATA as SHARED  # noqa: E402

from purer.data.episodes import (
    TaskList,
    class_table,
    make_task_list,
    materialize,
    random_subsets,
    sample_tasks,
)
from purer.errors import DataError
from purer.types import InputSpace, SplitData

SPACE = InputSpace(4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def toy_split(sizes=(9, 12, 10, 11, 9, 14, 20), grouped: bool = True,
              class_ids: list[int] | None = None) -> SplitData:
    """Pixel [0, 0, 0] holds the label and [1, 0, 0] / [2, 0, 0] the image
    index, so every image tells what it is."""
    labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    if not grouped:
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    n = len(labels)
    images = torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(5),
                           dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    images[:, 1, 0, 0] = (torch.arange(n) // 256).to(torch.uint8)
    images[:, 2, 0, 0] = (torch.arange(n) % 256).to(torch.uint8)
    names = [f"class{i}" for i in range(len(sizes))]
    return SplitData(images, labels, names, SPACE, class_ids)


def test_task_list_shapes_and_parameters():
    split = toy_split()
    tasks = make_task_list(split, way=5, shot=2, query=3, count=40, seed=7,
                           dataset="toy", split_name="meta_test")
    assert isinstance(tasks, TaskList)
    assert tuple(tasks.indices.shape) == (40, 5, 5) and tuple(tasks.classes.shape) == (40, 5)
    assert tasks.params == {"dataset": "toy", "split": "meta_test", "way": 5, "shot": 2,
                            "query": 3, "count": 40, "seed": 7}
    assert len(tasks) == 40


@pytest.mark.parametrize("grouped", [True, False])
def test_every_image_has_its_task_class(grouped):
    split = toy_split(grouped=grouped)
    tasks = make_task_list(split, way=4, shot=3, query=5, count=200, seed=1)
    assert torch.equal(split.labels[tasks.indices], tasks.classes[..., None].expand(-1, -1, 8))
    # classes distinct inside a task, images distinct inside a class
    assert all(len(set(row.tolist())) == 4 for row in tasks.classes)
    flat = tasks.indices.reshape(-1, 8)
    assert all(len(set(row.tolist())) == 8 for row in flat)


def test_sampling_covers_classes_and_images():
    split = toy_split()
    tasks = make_task_list(split, way=5, shot=1, query=1, count=500, seed=0)
    assert set(tasks.classes.flatten().tolist()) == set(range(split.num_classes))
    used = set(tasks.indices.flatten().tolist())
    assert len(used) > 0.95 * len(split)  # large classes are not truncated to the smallest


def test_random_subsets_are_uniform_ordered_and_distinct():
    g = torch.Generator().manual_seed(0)
    draws = random_subsets(torch.full((24000,), 4), 2, g)  # 12 ordered pairs
    counts = torch.bincount(draws[:, 0] * 4 + draws[:, 1], minlength=16)
    pairs = counts[torch.tensor([a * 4 + b for a in range(4) for b in range(4) if a != b])]
    assert int(counts.sum()) == int(pairs.sum()) == 24000
    assert int(pairs.min()) > 1800 and int(pairs.max()) < 2200  # expected 2000 each
    mixed = random_subsets(torch.tensor([3, 50] * 500), 3, g)
    assert int(mixed[0::2].max()) == 2 and int(mixed[1::2].max()) <= 49
    assert all(len(set(row)) == 3 for row in mixed.tolist())


def test_same_arguments_same_tasks_on_any_machine():
    split = toy_split()
    a = make_task_list(split, 5, 1, 4, 30, seed=11)
    b = make_task_list(split, 5, 1, 4, 30, seed=11)
    c = make_task_list(split, 5, 1, 4, 30, seed=12)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.classes, b.classes)
    assert not torch.equal(a.indices, c.indices)
    # pinned: CPU generators and stable sorts give these exact tasks everywhere
    digest = hashlib.sha256(a.indices.numpy().tobytes() + a.classes.numpy().tobytes())
    assert digest.hexdigest() == TASKS_SHA256


TASKS_SHA256 = "750fdae68c6f7bc6c4c7c407e8e3c52bd24f43858a9e17f149370e7d6cb5e336"


def test_too_few_images_is_a_data_error_naming_the_class():
    split = toy_split(sizes=(9, 12, 4, 11, 9))
    with pytest.raises(DataError, match="toy/meta_val: class 'class2' has 4 images, fewer "
                                        "than shot\\+query=6"):
        make_task_list(split, 5, 1, 5, 10, seed=0, dataset="toy", split_name="meta_val")
    with pytest.raises(DataError, match="6-way tasks need 6 classes"):
        make_task_list(split, 6, 1, 1, 10, seed=0)


def test_batches_are_class_major_and_normalised():
    split = toy_split(class_ids=[70, 71, 72, 73, 74, 75, 76])
    tasks = make_task_list(split, way=3, shot=2, query=4, count=10, seed=2)
    batches = list(tasks.batches(split, "cpu", batch_size=4))
    assert [b.num_episodes for b in batches] == [4, 4, 2]
    b = batches[1]
    assert tuple(b.support.shape) == (4, 6, 3, 4, 4) and tuple(b.query.shape) == (4, 12, 3, 4, 4)
    assert b.support.dtype == torch.float32
    assert b.support_labels.tolist() == [[0, 0, 1, 1, 2, 2]] * 4
    assert b.query_labels.tolist() == [[0] * 4 + [1] * 4 + [2] * 4] * 4
    assert torch.equal(b.classes, tasks.classes[4:8] + 70)
    # the same numbers as InputSpace.normalize, bit for bit
    support_idx = tasks.indices[4:8, :, :2].reshape(4, 6)
    assert torch.equal(b.support, SPACE.normalize(split.images[support_idx]))
    # denormalised pixel [0,0,0] is the label of the episode's class
    pixels = (SPACE.denormalize(b.query) * 255).round().to(torch.uint8)
    true = tasks.classes[4:8].repeat_interleave(4, dim=1)
    assert torch.equal(pixels[:, :, 0, 0, 0].long(), true)


def test_batches_without_class_ids_report_split_labels():
    split = toy_split()
    tasks = make_task_list(split, 2, 1, 1, 3, seed=4)
    batch = next(tasks.batches(split, "cpu", 10))
    assert torch.equal(batch.classes, tasks.classes)
    assert batch.way == 2


def test_sample_tasks_advances_the_generator():
    split = toy_split()
    g = torch.Generator().manual_seed(9)
    state = g.get_state()
    first = sample_tasks(split, 5, 1, 3, 4, g, "cpu")
    second = sample_tasks(split, 5, 1, 3, 4, g, "cpu")
    assert not torch.equal(first.support, second.support)
    g.set_state(state)
    again = sample_tasks(split, 5, 1, 3, 4, g, "cpu")
    assert torch.equal(first.support, again.support) and torch.equal(first.query, again.query)
    assert tuple(first.query.shape) == (4, 15, 3, 4, 4)
    pixels = (SPACE.denormalize(first.support) * 255).round().long()[:, :, 0, 0, 0]
    assert torch.equal(pixels, first.classes)


def test_materialize_zero_query_and_class_table():
    split = toy_split(grouped=False)
    order, starts, sizes = class_table(split)
    assert sizes.tolist() == [9, 12, 10, 11, 9, 14, 20]
    for c in range(7):
        assert bool((split.labels[order[starts[c]:starts[c] + sizes[c]]] == c).all())
    tasks = make_task_list(split, 3, 2, 0, 2, seed=0)
    batch = materialize(split, tasks.indices, tasks.classes, shot=2)
    assert tuple(batch.query.shape) == (2, 0, 3, 4, 4)


def test_episodes_on_the_built_in_dataset():
    from purer_plugins.datasets.synthetic_shapes import SyntheticShapes

    split = SyntheticShapes(SyntheticShapes.Options(images_per_class=20)).load("meta_test")
    tasks = make_task_list(split, 5, 5, 15, 20, seed=0, dataset="synthetic-shapes")
    assert torch.equal(split.labels[tasks.indices], tasks.classes[..., None].expand(-1, -1, 20))
    batch = next(tasks.batches(split, "cpu", 20))
    assert tuple(batch.support.shape) == (20, 25, 3, 32, 32)
    assert set(batch.classes.flatten().tolist()) <= set(split.class_ids)


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "cifar-fs" / "meta_test.npz").is_file(),
                    reason=f"no CIFAR-FS npz under {SHARED}")
def test_real_cifar_fs_tasks_are_labelled_correctly():
    from purer_plugins.datasets.cifar_fs import CifarFS

    split = CifarFS(CifarFS.Options(root=str(SHARED / "cifar-fs"))).load("meta_test")
    tasks = make_task_list(split, 5, 5, 15, 600, seed=0, dataset="cifar-fs",
                           split_name="meta_test")
    assert torch.equal(split.labels[tasks.indices], tasks.classes[..., None].expand(-1, -1, 20))
    batch = next(tasks.batches(split, "cpu", 50))
    assert batch.num_episodes == 50
    assert set(batch.classes.flatten().tolist()) <= set(split.class_ids)
