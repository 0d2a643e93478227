"""Pseudo episodes built from the memory: labels, class mixing, gradients."""

import pytest
import torch

from purer.engine.pseudo_episodes import OwnerTable, sample_pseudo_episodes
from purer.errors import ConfigError
from purer.types import ClassBank


def tagged_bank(class_ids, per_class=6):
    """Every image of entry g is filled with the value g, so episodes can be decoded."""
    g = len(class_ids)
    images = torch.arange(g, dtype=torch.float32).view(g, 1, 1, 1, 1).expand(g, per_class, 3, 4, 4).clone()
    images += torch.arange(per_class).view(1, per_class, 1, 1, 1) / 100.0  # image index in the fraction
    return ClassBank(images, torch.tensor(class_ids))


def test_labels_follow_classes_and_support_query_are_disjoint():
    bank = tagged_bank([10, 11, 12, 13, 14, 15, 16, 17])
    owners = OwnerTable(bank.class_ids)
    g = torch.Generator().manual_seed(0)
    ep = sample_pseudo_episodes(bank, owners, way=3, shot=2, query=3, count=5, generator=g)
    assert ep.support.shape == (5, 6, 3, 4, 4) and ep.query.shape == (5, 9, 3, 4, 4)
    for e in range(5):
        entry_s = ep.support[e, :, 0, 0, 0].floor().long()
        entry_q = ep.query[e, :, 0, 0, 0].floor().long()
        for label in range(3):
            s = set(entry_s[ep.support_labels[e] == label].tolist())
            q = set(entry_q[ep.query_labels[e] == label].tolist())
            assert len(s) == 1 and s == q  # one class per label
            assert bank.class_ids[s.pop()].item() == ep.classes[e, label].item()
        ids_s = ep.support[e, :, 0, 0, 0]
        ids_q = ep.query[e, :, 0, 0, 0]
        assert not set(ids_s.tolist()) & set(ids_q.tolist())  # no image in both


def test_one_real_class_never_takes_two_slots():
    # class 5 is held by three teachers (entries 0, 1, 2): an episode must not pick it twice
    bank = tagged_bank([5, 5, 5, 6, 7])
    owners = OwnerTable(bank.class_ids)
    g = torch.Generator().manual_seed(1)
    ep = sample_pseudo_episodes(bank, owners, way=3, shot=1, query=1, count=50, generator=g)
    assert all(sorted(row.tolist()) == [5, 6, 7] for row in ep.classes)
    used = ep.support[:, :, 0, 0, 0].floor().long()
    assert set(used.flatten().tolist()) >= {0, 1, 2, 3, 4} - set()  # all owners get drawn


def test_same_seed_same_episodes():
    bank = tagged_bank(list(range(20)))
    owners = OwnerTable(bank.class_ids)
    a = sample_pseudo_episodes(bank, owners, 5, 1, 4, 3, torch.Generator().manual_seed(3))
    b = sample_pseudo_episodes(bank, owners, 5, 1, 4, 3, torch.Generator().manual_seed(3))
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)


def test_gradients_flow_back_into_the_bank():
    bank = tagged_bank(list(range(6)))
    images = bank.images.clone().requires_grad_()
    ep = sample_pseudo_episodes(ClassBank(images, bank.class_ids), OwnerTable(bank.class_ids),
                                2, 1, 2, 1, torch.Generator().manual_seed(0))
    (ep.support.sum() + 2 * ep.query.sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_too_few_classes_or_images_is_a_config_error():
    bank = tagged_bank([1, 2], per_class=3)
    owners = OwnerTable(bank.class_ids)
    with pytest.raises(ConfigError, match="train.way"):
        sample_pseudo_episodes(bank, owners, 3, 1, 1, 1, torch.Generator())
    with pytest.raises(ConfigError, match="shot \\+ query"):
        sample_pseudo_episodes(bank, owners, 2, 2, 2, 1, torch.Generator())
