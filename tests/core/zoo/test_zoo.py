"""Teacher zoos: build, manifest, verification, bring-your-own, resume, loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO
from safetensors.torch import load_file, save_file

import purer
from purer.cli.main import build_cli
from purer.config import ZooBuildOptions
from purer.errors import ConfigError, ZooError
from purer.interfaces import DatasetReader
from purer.models import create_model
from purer.rundir import file_sha256
from purer.testing import build_tiny_zoo, synthetic_split, tiny_meta_train, tiny_zoo  # noqa: F401
from purer.types import InputSpace
from purer.zoo import add_teacher, load_manifest, load_teachers, save_manifest
from purer.zoo import build as build_mod
from purer.zoo.build import _split_indices
from purer.zoo.manifest import Manifest
from purer.zoo.plan import make_plan
from purer.zoo.train import TrainSettings, accuracy, augment_batch


@pytest.fixture
def zoo_copy(tiny_zoo: Path, tmp_path: Path) -> Path:  # noqa: F811
    """A private copy of the session's tiny zoo, free to corrupt."""
    return Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))


@pytest.fixture
def one_thread():
    """Tiny models run faster on one intra-op thread (much faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _edit(zoo: Path, teacher: str, **changes) -> None:
    data = json.loads((zoo / "zoo.json").read_text())
    entry = next(t for t in data["teachers"] if t["name"] == teacher)
    entry.update(changes)
    (zoo / "zoo.json").write_text(json.dumps(data))


def _one_line_error(zoo: Path, match: str) -> str:
    with pytest.raises(ZooError, match=match) as info:
        load_teachers(zoo)
    assert "\n" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------- plan
def test_disjoint_blocks_follow_sorted_class_names() -> None:
    names = [f"c{i:02d}" for i in range(64)][::-1]  # reversed: order must not matter
    plan = make_plan(ZooBuildOptions(teachers=20), {"d": names}, "d")
    assert len(plan) == 13  # capped by 13 blocks
    assert plan[0].class_names == ("c00", "c01", "c02", "c03", "c04")
    assert plan[-1].class_names == ("c60", "c61", "c62", "c63")
    assert len({c for p in plan for c in p.class_names}) == 64


def test_random_assignment_is_seeded_and_prefix_stable() -> None:
    names = [f"c{i:02d}" for i in range(64)]
    opts = dict(assign="random", scenario="sh")
    four = make_plan(ZooBuildOptions(teachers=4, **opts), {"d": names}, "d")
    two = make_plan(ZooBuildOptions(teachers=2, **opts), {"d": names}, "d")
    other = make_plan(ZooBuildOptions(teachers=4, seed=1, **opts), {"d": names}, "d")
    assert two == four[:2]
    assert four != other
    assert all(len(set(p.class_names)) == 5 for p in four)
    assert {p.arch for p in four} <= {"conv4", "cifar_resnet10", "cifar_resnet18"}


def test_training_protocol_defaults() -> None:
    conv = TrainSettings.for_arch("conv4", 60, 128, None, False, ["conv4"])
    assert (conv.optimizer, conv.lr, conv.milestones, conv.gamma, conv.grad_clip) == \
        ("adam", 0.01, [30, 40, 50], 0.2, 50.0)
    res = TrainSettings.for_arch("cifar_resnet18", 60, 128, None, False, ["conv4"])
    assert (res.optimizer, res.lr, res.momentum, res.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)


def test_augment_batch_crops_and_flips() -> None:
    """Every output is one of the image's padded crops, flipped or not, and
    over a batch of 64 both flips and several offsets occur (a no-op fails)."""
    pad = 2
    x = torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).view(64, 3, 8, 8) + 1
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    seen = set()
    for i in range(len(x)):
        matches = [(oy, ox, flip) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                   for flip in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(
                       padded[i, :, oy:oy + 8, ox:ox + 8]))]
        assert len(matches) == 1, i
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(oy, ox) for oy, ox, _ in seen}) >= 5
    assert any((oy, ox) != (pad, pad) for oy, ox, _ in seen)


# ----------------------------------------------------------------- tiny zoo
def test_build_tiny_zoo_takes_the_callers_arch_kwargs(tmp_path: Path) -> None:
    zoo = build_tiny_zoo(tmp_path / "zoo", teachers=1, arch_kwargs={"conv4": {"width": 4}})
    assert load_manifest(zoo).teachers[0].arch_kwargs == {"width": 4}


def test_tiny_zoo_manifest(tiny_zoo: Path) -> None:  # noqa: F811
    manifest = load_manifest(tiny_zoo)
    split = tiny_meta_train("synthetic-shapes")
    ordered = sorted(split.class_names)
    assert [t.name for t in manifest.teachers] == ["t000", "t001", "t002", "t003"]
    for i, t in enumerate(manifest.teachers):
        assert t.class_names == ordered[5 * i:5 * i + 5]
        assert t.class_ids == [split.class_ids[split.class_names.index(n)] for n in t.class_names]
        assert (t.arch, t.arch_kwargs, t.dataset) == ("conv4", {"width": 8}, "synthetic-shapes")
        assert t.space == split.space
        assert t.sha256 == file_sha256(tiny_zoo / t.file)
        assert t.heldout_accuracy == pytest.approx(max(t.train["heldout_curve"]), abs=1e-4)
        assert t.train["optimizer"] == "adam" and t.train["epochs"] == 2


def test_best_epoch_is_what_was_saved(tiny_zoo: Path) -> None:  # noqa: F811
    """The stored weights reproduce the recorded (best) held-out accuracy."""
    split = tiny_meta_train("synthetic-shapes")
    manifest = load_manifest(tiny_zoo)
    for entry, teacher in zip(manifest.teachers, load_teachers(tiny_zoo)):
        g = torch.Generator().manual_seed(entry.train["seed"])
        _, held = _split_indices(split, tuple(entry.class_names), 0.2, g)
        x = split.space.normalize(split.images[torch.cat(held)])
        y = torch.cat([torch.full((len(h),), j) for j, h in enumerate(held)])
        assert accuracy(teacher.model, x, y) == pytest.approx(entry.heldout_accuracy, abs=1e-6)


def test_load_teachers_frozen_on_device(tiny_zoo: Path) -> None:  # noqa: F811
    teachers = load_teachers(tiny_zoo, "cpu", channels_last=True)
    assert len(teachers) == 4
    for t in teachers:
        assert not t.model.training
        assert not any(p.requires_grad for p in t.model.parameters())
        assert t.has_bn and len(t.bn_layers) == 4
        assert t.num_classes == 5 and t.space.size == 32
        assert t.model.blocks[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert t.model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_manifest_round_trip(tiny_zoo: Path, tmp_path: Path) -> None:  # noqa: F811
    manifest = load_manifest(tiny_zoo / "zoo.json")
    save_manifest(tmp_path, manifest)
    again = load_manifest(tmp_path)
    assert again == manifest
    assert Manifest.model_validate_json(again.model_dump_json()) == manifest


# ---------------------------------------------------------- corrupt / mismatched
def test_truncated_weights_rejected(zoo_copy: Path) -> None:
    path = zoo_copy / "t001.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    _one_line_error(zoo_copy, r"teacher 't001' \(t001.safetensors\): sha256 mismatch")
    _edit(zoo_copy, "t001", sha256=None)  # without a checksum the parser catches it
    _one_line_error(zoo_copy, r"teacher 't001' \(t001.safetensors\): not a readable safetensors")


def test_flipped_byte_rejected(zoo_copy: Path) -> None:
    path = zoo_copy / "t002.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    _one_line_error(zoo_copy, r"teacher 't002' \(t002.safetensors\): sha256 mismatch")


def test_missing_file_rejected(zoo_copy: Path) -> None:
    (zoo_copy / "t003.safetensors").unlink()
    _one_line_error(zoo_copy, r"teacher 't003' \(t003.safetensors\): weights file not found")


def test_wrong_class_count_rejected(zoo_copy: Path) -> None:
    entry = load_manifest(zoo_copy).get("t000")
    _edit(zoo_copy, "t000", num_classes=4, class_ids=entry.class_ids[:4],
          class_names=entry.class_names[:4])
    _one_line_error(zoo_copy, r"teacher 't000' \(t000.safetensors\): zoo.json says 4 classes "
                              r"but the head 'fc.\w+' in the weights has 5 outputs")


def test_wrong_shapes_rejected(zoo_copy: Path) -> None:
    _edit(zoo_copy, "t000", arch_kwargs={"width": 16})
    _one_line_error(zoo_copy, r"teacher 't000' \(t000.safetensors\): 'blocks.0.conv.weight' "
                              r"has shape \(8, 3, 3, 3\) in the weights but \(16, 3, 3, 3\)")


def test_missing_and_extra_keys_rejected(zoo_copy: Path) -> None:
    path = zoo_copy / "t001.safetensors"
    state = load_file(str(path))
    state["extra.weight"] = torch.zeros(1)
    del state["blocks.3.bn.running_var"]
    save_file(state, str(path))
    _edit(zoo_copy, "t001", sha256=file_sha256(path))
    msg = _one_line_error(zoo_copy, r"teacher 't001' \(t001.safetensors\): weights do not match")
    assert "1 missing (e.g. 'blocks.3.bn.running_var')" in msg and "1 unexpected" in msg


def test_unknown_architecture_rejected(zoo_copy: Path) -> None:
    _edit(zoo_copy, "t002", arch="no_such_net")
    _one_line_error(zoo_copy, r"teacher 't002' \(t002.safetensors\): unknown architecture "
                              r"'no_such_net'")


@pytest.mark.parametrize("change, match", [
    ({"file": "../outside.safetensors"}, r"teacher 't000': file: .*relative path inside"),
    ({"class_ids": [1, 2, 3]}, r"teacher 't000': .*num_classes is 5 but there are 3 class_ids"),
    ({"colour": "red"}, r"teacher 't000': colour: unknown key"),
])
def test_invalid_manifest_entries(zoo_copy: Path, change: dict, match: str) -> None:
    _edit(zoo_copy, "t000", **change)
    with pytest.raises(ZooError, match=match):
        load_manifest(zoo_copy)


def test_documented_manifest_example_validates() -> None:
    doc = (REPO / "docs" / "zoo.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    manifest = Manifest.model_validate_json(example)
    assert manifest.teachers[0].arch == "resnet18"


def test_unsupported_format_version(zoo_copy: Path) -> None:
    data = json.loads((zoo_copy / "zoo.json").read_text())
    data["format_version"] = 2
    (zoo_copy / "zoo.json").write_text(json.dumps(data))
    with pytest.raises(ZooError, match="unsupported format version 2"):
        load_manifest(zoo_copy)
    with pytest.raises(ZooError, match="not a teacher zoo"):
        load_manifest(zoo_copy / "nowhere")


# ------------------------------------------------------------------ SH and MH
def test_sh_zoo_mixes_backbones_and_timm_models(tmp_path: Path) -> None:
    archs = ("conv4", "cifar_resnet10", "test_efficientnet", "test_vit")
    zoo = build_tiny_zoo(tmp_path / "sh", scenario="sh", archs=archs, teachers=6, epochs=1)
    manifest = load_manifest(zoo)
    assert {t.arch for t in manifest.teachers} == set(archs)
    by_arch = {t.arch: t for t in manifest.teachers}
    assert by_arch["cifar_resnet10"].arch_kwargs["width"] == 0.125
    assert by_arch["cifar_resnet10"].train["optimizer"] == "sgd"
    assert by_arch["test_vit"].arch_kwargs == {"img_size": 32}  # patch grid follows the data
    teachers = load_teachers(zoo)
    for t in teachers:
        assert t.model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
        assert t.has_bn == (t.arch != "test_vit")


class _OtherReader(DatasetReader):
    """A second dataset with another size (48 px) and normalisation."""

    def load(self, split: str):
        return synthetic_split(num_classes=16, per_class=30, size=48, seed=3, prefix="other",
                               first_id=1000,
                               space=InputSpace(48, (0.4, 0.45, 0.5), (0.3, 0.3, 0.3)))


class _OtherPlugin:
    @purer.hookimpl
    def register_datasets(self, register) -> None:
        register("test-zoo-other", _OtherReader)


def test_mh_zoo_keeps_each_dataset_space(tmp_path: Path, register_plugin) -> None:
    register_plugin(_OtherPlugin(), "test-zoo-other")  # removed again after the test
    zoo = build_tiny_zoo(tmp_path / "mh", scenario="mh", archs=("conv4",), teachers=6,
                         extra_data=["test-zoo-other"])
    manifest = load_manifest(zoo)
    datasets = {t.dataset for t in manifest.teachers}
    assert datasets == {"synthetic-shapes", "test-zoo-other"}
    for t in manifest.teachers:
        if t.dataset == "test-zoo-other":
            assert (t.input_size, t.mean) == (48, (0.4, 0.45, 0.5))
            assert t.arch_kwargs == {"width": 8, "img_size": 48}  # conv4 head sized for 48 px
            assert all(i >= 1000 for i in t.class_ids)
        else:
            assert t.input_size == 32
    for t in load_teachers(zoo):
        assert t.model(torch.randn(2, 3, t.space.size, t.space.size)).shape == (2, 5)


def test_mh_needs_a_second_dataset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mh needs at least one --extra-data"):
        build_tiny_zoo(tmp_path / "z", scenario="mh")


def test_data_options_reach_the_dataset_plugin(tmp_path: Path, one_thread) -> None:
    opts = ZooBuildOptions(teachers=1, epochs=1, arch_kwargs={"width": 4})
    manifest = build_mod.build_zoo(opts, "synthetic-shapes", None, tmp_path / "z", "cpu",
                                   data_options={"images_per_class": 20, "root": None})
    (entry,) = manifest.teachers
    assert (entry.train["train_images"], entry.train["heldout_images"]) == (80, 20)
    assert manifest.build["data_options"] == {"images_per_class": 20}


# --------------------------------------------------------------------- resume
def test_resume_extends_without_retraining(tmp_path: Path, monkeypatch) -> None:
    trained: list[int] = []
    real_fit = build_mod.fit

    def counting_fit(*args, **kwargs):
        trained.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(build_mod, "fit", counting_fit)
    zoo = build_tiny_zoo(tmp_path / "z", teachers=2)
    first = {p.name: p.stat().st_mtime_ns for p in zoo.glob("*.safetensors")}
    assert len(trained) == 2
    build_tiny_zoo(zoo, teachers=4)
    assert len(trained) == 4  # only t002 and t003 trained
    assert {p.name: p.stat().st_mtime_ns for p in zoo.glob("*.safetensors")
            if p.name in first} == first
    assert [t.name for t in load_manifest(zoo).teachers] == ["t000", "t001", "t002", "t003"]


def test_interrupted_build_resumes_at_first_unfinished(tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []
    real_fit = build_mod.fit

    def dying_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(build_mod, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_zoo(tmp_path / "z", teachers=4)
    assert [t.name for t in load_manifest(tmp_path / "z").teachers] == ["t000", "t001"]
    calls.clear()
    build_tiny_zoo(tmp_path / "z", teachers=4)
    assert len(calls) == 2
    assert len(load_teachers(tmp_path / "z")) == 4


def test_build_refuses_a_zoo_built_otherwise(tiny_zoo: Path, tmp_path: Path) -> None:  # noqa: F811
    zoo = Path(shutil.copytree(tiny_zoo, tmp_path / "z"))
    with pytest.raises(ZooError, match=r"options differ in: epochs"):
        build_tiny_zoo(zoo, epochs=3)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ZooError, match="not empty and holds no zoo.json"):
        build_tiny_zoo(tmp_path / "junk")


# ------------------------------------------------------------- bring your own
def _tiny_state(width: int = 8, classes: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model("conv4", num_classes=classes, width=width).state_dict()


def test_add_safetensors_teacher(tmp_path: Path) -> None:
    state = _tiny_state()
    save_file(state, str(tmp_path / "mine.safetensors"))
    entry = add_teacher(tmp_path / "zoo", "conv4", tmp_path / "mine.safetensors",
                        arch_kwargs={"width": 8}, classes=["cat", "dog", "fox"], dataset="pets")
    assert (entry.name, entry.num_classes, entry.class_ids) == ("mine", 3, [0, 1, 2])
    assert entry.input_size == 32  # from conv4's pretrained_cfg
    (teacher,) = load_teachers(tmp_path / "zoo")
    assert teacher.class_names == ["cat", "dog", "fox"]
    assert torch.equal(teacher.model.state_dict()["fc.weight"], state["fc.weight"])
    # a second teacher sharing a class name of the same dataset shares its id
    save_file(state, str(tmp_path / "two.safetensors"))
    second = add_teacher(tmp_path / "zoo", "conv4", tmp_path / "two.safetensors",
                         arch_kwargs={"width": 8}, classes=["dog", "owl", "cat"], dataset="pets")
    assert second.class_ids == [1, 3, 0]
    with pytest.raises(ZooError, match="already in"):
        add_teacher(tmp_path / "zoo", "conv4", tmp_path / "two.safetensors",
                    arch_kwargs={"width": 8})


def test_add_pth_state_dict_unwrapped(tmp_path: Path) -> None:
    state = _tiny_state(classes=4)
    wrapped = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    entry = add_teacher(tmp_path / "zoo", "conv4", tmp_path / "ckpt.pth",
                        arch_kwargs={"width": 8}, input_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    assert entry.num_classes == 4  # read from the head
    assert entry.file == "ckpt.safetensors" and entry.mean == (0.5, 0.5, 0.5)
    assert set(load_file(str(tmp_path / "zoo" / entry.file))) == set(state)


_EXECUTED: list[str] = []


def _mark_executed() -> dict:
    _EXECUTED.append("pickle code ran")
    return {}


class _Sneaky:
    def __reduce__(self):
        return (_mark_executed, ())


def test_add_refuses_pickled_objects(tmp_path: Path) -> None:
    state = _tiny_state()
    torch.save({"state_dict": state, "hook": _Sneaky()}, tmp_path / "evil.pt")
    with pytest.raises(ZooError, match="refused: not a plain tensor checkpoint"):
        add_teacher(tmp_path / "zoo", "conv4", tmp_path / "evil.pt", arch_kwargs={"width": 8})
    assert not _EXECUTED
    torch.save({**state, "note": "hello"}, tmp_path / "str.pt")
    with pytest.raises(ZooError, match="entry 'note' is a str, not a tensor"):
        add_teacher(tmp_path / "zoo", "conv4", tmp_path / "str.pt", arch_kwargs={"width": 8})
    assert not (tmp_path / "zoo" / "zoo.json").exists()


def test_add_rejects_weights_of_another_shape(tmp_path: Path) -> None:
    save_file(_tiny_state(width=8), str(tmp_path / "w8.safetensors"))
    with pytest.raises(ZooError, match=r"teacher 'w8' \(.*w8.safetensors\): 'blocks.0.conv.weight' "
                                       r"has shape \(8, 3, 3, 3\)"):
        add_teacher(tmp_path / "zoo", "conv4", tmp_path / "w8.safetensors", classes=list("abc"))


def test_add_speaks_of_the_options_given_not_of_a_zoo_json(tmp_path: Path) -> None:
    weights = tmp_path / "five.safetensors"
    save_file(_tiny_state(classes=5), str(weights))
    with pytest.raises(ZooError) as caught:
        add_teacher(tmp_path / "zoo", "conv4", weights, classes=list("abc"),
                    arch_kwargs={"width": 8})
    message = str(caught.value)
    assert message.startswith(f"teacher 'five' ({weights}): --classes gives 3 classes but the head")
    assert "zoo.json" not in message and "5 outputs" in message


# ------------------------------------------------------------------------ CLI
def test_cli_build_show_add(tmp_path: Path, monkeypatch, one_thread) -> None:
    monkeypatch.setattr(build_mod, "load_meta_train", tiny_meta_train)
    runner = CliRunner()
    cli = build_cli()
    zoo = tmp_path / "zoo"
    result = runner.invoke(cli, ["zoo", "build", "--teachers", "2", "--epochs", "1",
                                 "--arch-kwargs", '{"width": 4}', "--device", "cpu",
                                 "--out", str(zoo)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [t.arch_kwargs for t in load_manifest(zoo).teachers] == [{"width": 4}] * 2
    save_file(_tiny_state(), str(tmp_path / "own.safetensors"))
    result = runner.invoke(cli, ["zoo", "add", str(zoo), "--arch", "conv4", "--weights",
                                 str(tmp_path / "own.safetensors"), "--arch-kwargs",
                                 '{"width": 8}', "--classes", "a,b,c", "--class-ids", "90,91,92",
                                 "--dataset", "mine"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["zoo", "show", str(zoo)], catch_exceptions=False)
    assert result.exit_code == 0 and "t001" in result.output and "own" in result.output
    shown = json.loads(runner.invoke(cli, ["zoo", "show", str(zoo), "--json"]).output)
    assert [t["name"] for t in shown["teachers"]] == ["t000", "t001", "own"]
    assert shown["teachers"][2]["class_ids"] == [90, 91, 92]
    # the added teacher survives a resumed build that extends the zoo
    result = runner.invoke(cli, ["zoo", "build", "--teachers", "3", "--epochs", "1",
                                 "--arch-kwargs", '{"width": 4}', "--device", "cpu",
                                 "--out", str(zoo)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [t.name for t in load_manifest(zoo).teachers] == ["t000", "t001", "t002", "own"]
