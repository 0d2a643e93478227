"""Teachers are checked where their faults are made: input sizes against the
architecture (derived, dry-run, bounded), placeholder classes kept apart,
NaN/Inf weights and normalisation refused at load time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from purer.engine.trainer import class_keys
from purer.errors import ZooError
from purer.models import create_model
from purer.rundir import file_sha256
from purer.testing import TINY_ARCH_KWARGS
from purer.zoo import add_teacher, load_teachers


@pytest.fixture
def zoo_copy(tiny_zoo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))


def edit_entry(zoo: Path, teacher: str, **changes) -> None:
    data = json.loads((zoo / "zoo.json").read_text())
    next(t for t in data["teachers"] if t["name"] == teacher).update(changes)
    (zoo / "zoo.json").write_text(json.dumps(data))


def rewrite_weights(zoo: Path, teacher: str, change) -> None:
    """Change a teacher's tensors and record the new file's sha256 (as a
    careless tool would), so only the content checks can catch it."""
    path = zoo / f"{teacher}.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))
    edit_entry(zoo, teacher, sha256=file_sha256(path))


def one_line(error: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(error.value)
    return str(error.value)


# ------------------------------------------------------------------ input size
def test_zoo_add_records_the_size_the_model_was_built_for(tmp_path):
    torch.manual_seed(0)
    save_file(create_model("test_vit", num_classes=5, img_size=32).state_dict(),
              str(tmp_path / "vit.safetensors"))
    entry = add_teacher(tmp_path / "zoo", "test_vit", tmp_path / "vit.safetensors",
                        arch_kwargs={"img_size": 32})
    assert entry.input_size == 32  # not timm's default for the architecture
    (teacher,) = load_teachers(tmp_path / "zoo")
    assert teacher.space.size == 32
    edit_entry(tmp_path / "zoo", "vit", input_size=224)  # the size zoo add used to record
    with pytest.raises(ZooError) as error:
        load_teachers(tmp_path / "zoo")
    assert one_line(error) == ("teacher 'vit' (vit.safetensors): input_size: 224 px, but "
                               "'test_vit' {'img_size': 32} was built for 32 px")


def test_zoo_add_refuses_a_size_the_architecture_does_not_take(tmp_path):
    torch.manual_seed(0)
    save_file(create_model("conv4", num_classes=5, **TINY_ARCH_KWARGS["conv4"]).state_dict(),
              str(tmp_path / "c4.safetensors"))
    with pytest.raises(ZooError) as error:
        add_teacher(tmp_path / "zoo", "conv4", tmp_path / "c4.safetensors",
                    arch_kwargs=TINY_ARCH_KWARGS["conv4"], input_size=64)
    assert one_line(error) == ("teacher 'c4' (c4.safetensors): input_size: 64 px, but 'conv4' "
                               "{'width': 8} was built for 32 px")
    assert not (tmp_path / "zoo" / "zoo.json").exists()


class FlatNet(nn.Module):
    """A classifier whose head width fixes its input size without saying so."""

    def __init__(self, num_classes: int = 5, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 32 * 32, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))

    def get_classifier(self):
        return self.fc


@timm.models.register_model
def purer_test_flatnet(pretrained: bool = False, **kwargs) -> FlatNet:
    return FlatNet(**kwargs)


def test_a_size_the_model_does_not_declare_is_checked_by_one_forward_pass(tmp_path):
    torch.manual_seed(0)
    save_file(FlatNet().state_dict(), str(tmp_path / "flat.safetensors"))
    with pytest.raises(ZooError) as error:
        add_teacher(tmp_path / "zoo", "purer_test_flatnet", tmp_path / "flat.safetensors",
                    input_size=48, mean=[0.5] * 3, std=[0.25] * 3)
    assert one_line(error).startswith("teacher 'flat' (flat.safetensors): input_size: 48 px does "
                                      "not fit 'purer_test_flatnet' (RuntimeError: ")
    entry = add_teacher(tmp_path / "zoo", "purer_test_flatnet", tmp_path / "flat.safetensors",
                        input_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    assert entry.input_size == 32
    edit_entry(tmp_path / "zoo", "flat", input_size=40)
    with pytest.raises(ZooError, match="input_size: 40 px does not fit"):
        load_teachers(tmp_path / "zoo")


def test_an_input_size_beyond_the_bound_is_refused_before_anything_is_allocated(zoo_copy):
    edit_entry(zoo_copy, "t001", input_size=200_000)
    with pytest.raises(ZooError) as error:
        load_teachers(zoo_copy)
    assert one_line(error).endswith("teacher 't001': input_size: Input should be less than or "
                                    "equal to 1024")


# ------------------------------------------------------------------ classes
def test_placeholder_classes_are_unique_per_teacher(tiny_zoo, tmp_path):
    for k in range(3):
        add_teacher(tmp_path / "apart", "conv4", tiny_zoo / f"t00{k}.safetensors",
                    arch_kwargs=TINY_ARCH_KWARGS["conv4"])
    teachers = load_teachers(tmp_path / "apart")
    assert len(set(class_keys(teachers).tolist())) == 15
    assert teachers[1].class_names[0] == "t001.class0"
    # shared only when the user says so, with the same class names
    for k in range(3):
        add_teacher(tmp_path / "shared", "conv4", tiny_zoo / f"t00{k}.safetensors",
                    arch_kwargs=TINY_ARCH_KWARGS["conv4"], classes=list("abcde"))
    assert len(set(class_keys(load_teachers(tmp_path / "shared")).tolist())) == 5


# ------------------------------------------------------------------ NaN / Inf
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_weights_are_refused_at_load(zoo_copy, value):
    def spoil(state):
        state["fc.weight"][0, 0] = value

    rewrite_weights(zoo_copy, "t002", spoil)
    with pytest.raises(ZooError) as error:
        load_teachers(zoo_copy)
    assert one_line(error) == ("teacher 't002' (t002.safetensors): weight 'fc.weight' holds NaN "
                               "or infinite values")


@pytest.mark.parametrize("field,value", [("mean", [0.5, float("nan"), 0.5]),
                                         ("std", [0.25, 0.25, float("inf")])])
def test_nonfinite_normalisation_is_refused_at_load(zoo_copy, field, value):
    edit_entry(zoo_copy, "t003", **{field: value})
    with pytest.raises(ZooError) as error:
        load_teachers(zoo_copy)
    assert one_line(error).startswith(f"{zoo_copy / 'zoo.json'}: teacher 't003': {field}: ")
    assert "must be finite" in str(error.value)


def test_zoo_add_refuses_nonfinite_weights(tiny_zoo, tmp_path):
    state = load_file(str(tiny_zoo / "t000.safetensors"))
    state["blocks.0.conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ZooError, match="weight 'blocks.0.conv.weight' holds NaN"):
        add_teacher(tmp_path / "zoo", "conv4", tmp_path / "bad.pt",
                    arch_kwargs=TINY_ARCH_KWARGS["conv4"])
