"""Every command over a table of bad inputs: exit status 2 and one ``error:``
line that says what is wrong, never a traceback; nothing already written is
lost, and a run that cannot start leaves no run folder behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from purer_plugins.datasets import cifar_fs
from safetensors.torch import load_file

from purer.config import build_config, to_toml
from purer.plugins import get_host
from purer.testing import run_purer

TINY_RUN = {
    "seed": 3, "data": {"name": "synthetic-shapes", "images_per_class": 60},
    "train": {"steps": 2, "val_every": 2, "val_tasks": 4, "checkpoint_every": 2, "image_every": 2,
              "query": 3, "meta_arch_kwargs": {"width": 8}},
    "eval": {"batch_tasks": 8, "tasks": 4},
}


class Inputs:
    """The files the bad inputs point at, made once."""

    def __init__(self, folder: Path, zoo: Path) -> None:
        self.folder, self.zoo = folder, zoo
        self.out = folder / "runs"
        self.config = folder / "run.toml"
        self.config.write_text(to_toml(build_config({**TINY_RUN, "zoo": {"path": str(zoo)},
                                                     "out": str(self.out)}, host=get_host())))
        self.run = self.out / "done"
        self.not_a_run = folder / "empty"
        self.not_a_run.mkdir()
        state = load_file(str(zoo / "t000.safetensors"))
        torch.save(state, folder / "good.pt")
        data = (folder / "good.pt").read_bytes()
        (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
        (folder / "text.pt").write_text("these are not weights\n")
        (folder / "truncated.safetensors").write_bytes(
            (zoo / "t000.safetensors").read_bytes()[:300])
        (folder / "a-file").write_text("")
        cifar = folder / "cifar"
        cifar.mkdir()
        for split, names in (("meta_train", ["apple", "bee"]), ("meta_val", ["baby", "bear"]),
                             ("meta_test", ["beaver", "bed"])):
            np.savez(cifar / f"{split}.npz", images=np.zeros((4, 32, 32, 3), np.uint8),
                     labels=np.array([0, 1, 0, 1]), classes=np.array(names),
                     class_ids=np.array([cifar_fs.CLASSES.lists["fine_label_names"].index(n)
                                         for n in names]))
        (cifar / "meta_val.npz").write_bytes((cifar / "meta_val.npz").read_bytes()[:200])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_zoo) -> Inputs:
    made = Inputs(tmp_path_factory.mktemp("bad-inputs"), tiny_zoo)
    assert run_purer("run", "--config", made.config, "--name", "done", "--no-eval") == 0
    return made


W8 = '{{"width":8}}'
# (command line with {placeholders} of Inputs, what the error line must say)
CASES = [
    # purer eval: the protocol's numbers, the trained head, names
    ("eval {run} --way 0", "error: eval.way: Input should be greater than or equal to 2"),
    ("eval {run} --way 1", "error: eval.way: Input should be greater than or equal to 2"),
    ("eval {run} --way 3", "error: eval.way=3 but the meta-model's head has 5 outputs"),
    ("eval {run} --way 10", "error: eval.way=10 but the meta-model's head has 5 outputs"),
    ("eval {run} --shot 0", "error: eval.shots.0: Input should be greater than or equal to 1"),
    ("eval {run} --shot 1 --shot -2", "error: eval.shots.1: Input should be greater than"),
    ("eval {run} --query 0", "error: eval.query: Input should be greater than or equal to 1"),
    ("eval {run} --query 100000", "fewer than shot+query=100001"),
    ("eval {run} --tasks 0", "error: eval.tasks: Input should be greater than or equal to 1"),
    ("eval {run} --batch-tasks 0", "error: eval.batch_tasks:"),
    ("eval {run} --baselines nope", "error: eval.baselines: unknown baseline 'nope'"),
    ("eval {run} --calibrator nope", "error: calibrator.name:"),
    ("eval {run} --set eval.seed=abc", "error: eval.seed:"),
    ("eval {not_a_run}", "not a run directory (no config.json)"),
    # purer run: configurations that cannot start (no run folder may stay behind)
    ("run --config {config} --set train.meta_arch_kwargs={{bogus=1}}",
     "error: train.meta_arch_kwargs: cannot build 'conv4' with {'bogus': 1}"),
    ("run --config {config} --set train.meta_arch=nope",
     "error: train.meta_arch: unknown architecture"),
    ("run --config {config} --set eval.baselines=[\"nope\"]", "unknown baseline 'nope'"),
    ("run --config {config} --zoo {not_a_run}", "not a teacher zoo"),
    ("run --config {config} --set train.way=18",
     "synthetic-shapes/meta_val: 18-way tasks need 18 classes, the split has 16 (meta-val tasks of "
     "train.way=18"),
    ("run --config {config} --set train.query=100",
     "synthetic-shapes/meta_val: class "),
    ("run --config {config} --force", "error: --force: only applies with --resume"),
    ("run --config {config} --name done", "already holds a run"),
    ("run --resume {run} --seed 9", "error: --resume: seed 3 -> 9 would change"),
    ("run --resume {run} --steps 1", "error: train.steps=1: the run is already at step 2"),
    # purer zoo add: files that are not weights, folders that cannot be made, sizes
    ("zoo add {folder}/z1 --arch conv4 --weights {folder}/text.pt --arch-kwargs " + W8,
     "text.pt: not a readable torch checkpoint"),
    ("zoo add {folder}/z1 --arch conv4 --weights {folder}/truncated.pt --arch-kwargs " + W8,
     "truncated.pt: not a readable torch checkpoint"),
    ("zoo add {folder}/z1 --arch conv4 --weights {folder}/truncated.safetensors",
     "truncated.safetensors: not a readable safetensors file"),
    ("zoo add {folder}/a-file/zoo --arch conv4 --weights {folder}/good.pt --arch-kwargs " + W8,
     "cannot write to the zoo (Not a directory)"),
    ("zoo add {folder}/z1 --arch conv4 --weights {folder}/good.pt --arch-kwargs " + W8
     + " --input-size 64", "input_size: 64 px, but 'conv4' {'width': 8} was built for 32 px"),
    ("zoo add {folder}/z1 --arch conv4 --weights {folder}/good.pt --arch-kwargs " + W8
     + " --input-size 100000", "input_size: Input should be less than or equal to 1024"),
    ("zoo add {folder}/z1 --arch conv4 --weights {folder}/good.pt --arch-kwargs " + W8
     + " --mean nan,0.5,0.5", "mean: Value error, must be finite numbers"),
    ("zoo add {folder}/z1 --arch conv4 --weights {folder}/good.pt --arch-kwargs {{\"bogus\":1}}",
     "cannot build 'conv4' with arch_kwargs {'bogus': 1}"),
    ("zoo show {not_a_run}", "not a teacher zoo (no zoo.json)"),
    # purer data show: a split other than the pictured one is damaged
    ("data show cifar-fs --root {folder}/cifar --out {folder}/grid.png",
     "error: cifar-fs meta_val: "),
    ("config show --set train.way=abc", "error: train.way:"),
]


def case_id(line: str) -> str:
    line = line.replace(" --arch conv4", "").replace(" --arch-kwargs " + W8, "")
    words = [w for w in line.replace("{", "").replace("}", "").split(" ") if w]
    return " ".join(Path(w).name if "/" in w else w for w in words)


@pytest.mark.parametrize("line,expected", CASES, ids=[case_id(c[0]) for c in CASES])
def test_bad_input_is_one_error_line_with_status_2(inputs, line, expected, capsys):
    args = [a.format(**vars(inputs)) for a in line.split(" ")]
    before = sorted(p.name for p in inputs.out.iterdir())
    run_files = {p: p.read_bytes() for p in inputs.run.rglob("*") if p.is_file()}
    code = run_purer(*args)
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], err
    assert expected in errors[0], errors[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in inputs.out.iterdir()) == before  # no half-made run folder
    assert {p: p.read_bytes() for p in inputs.run.rglob("*") if p.is_file()} == run_files
    shutil.rmtree(inputs.folder / "z1", ignore_errors=True)
