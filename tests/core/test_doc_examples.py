"""The components that docs/interfaces.md, docs/plugins.md and the README show work.

Every ```python block of those pages that defines a component (a class
deriving from one of the interfaces) must be self-contained: it runs here
in a module of its own, its components are registered through an inline
plugin (its own ``@hookimpl`` functions when it has some), built by the
host, and driven the way purer drives them: inverters and meta-learners
through real ECI outer steps, calibrators and meta-learners through a
meta-test evaluation, inversion terms on a teacher's pass and on ICFIL's
(no teacher, under ``vmap``), readers on files of the documented form.
The example plugin, the template the pages point to, passes its own tests.
"""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from purer.api import (
    Calibrator,
    InputSpace,
    InversionContext,
    Inverter,
    MetaLearner,
    hookimpl,
    teacher_view,
)
from purer.config import RunConfig
from purer.data.episodes import make_task_list
from purer.engine.trainer import ECITrainer
from purer.errors import DataError
from purer.evaluation.evaluator import evaluate
from purer.models import create_model
from purer.plugins import KINDS, get_host
from purer.testing import inversion_loss, synthetic_split, tiny_teacher

DOCS = [REPO / "docs" / "interfaces.md", REPO / "docs" / "plugins.md", REPO / "README.md"]
INTERFACES = {kind.base.__name__: name for name, kind in KINDS.items() if kind.base is not None}
SPACE = InputSpace(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each ```python block."""
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


def defines_component(code: str) -> bool:
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ClassDef):
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                     for b in node.bases}
            if bases & set(INTERFACES):
                return True
    return False


BLOCKS = [(path.name, line, code) for path in DOCS for line, code in python_blocks(path)
          if defines_component(code)]


def load(doc: str, line: int, code: str) -> types.ModuleType:
    """The block run as a module of its own (so it must import what it uses)."""
    module = types.ModuleType(f"doc_{doc.replace('.', '_')}_{line}")
    exec(compile(code, f"docs/{doc}:{line}", "exec"), module.__dict__)
    return module


def components(module: types.ModuleType) -> list[tuple[str, type]]:
    """(kind, class) of each component class the block defines."""
    found = []
    for value in vars(module).values():
        if isinstance(value, type) and value.__module__ == module.__name__:
            for base, kind in INTERFACES.items():
                if issubclass(value, KINDS[kind].base) and value.__name__ != base:
                    found.append((kind, value))
    return found


def register(module: types.ModuleType, register_plugin) -> dict[str, list[str]]:
    """Register the block's components: through its own hook implementations
    when it has them, else one inline plugin per block. Returns kind -> names."""
    if any(hasattr(v, "purer_impl") for v in vars(module).values()):
        return register_plugin(module, name=module.__name__).registers
    found = components(module)

    class Inline:
        pass

    for kind in {k for k, _ in found}:
        def hook(register, kind=kind):
            for k, cls in found:
                if k == kind:
                    register(f"doc-{cls.__name__.lower()}", cls)
        setattr(Inline, KINDS[kind].hook, staticmethod(hookimpl(specname=KINDS[kind].hook)(hook)))
    return register_plugin(Inline(), name=module.__name__).registers


# ------------------------------------------------------------------ how purer drives each kind
def teachers() -> list:
    return [tiny_teacher(0, range(0, 5), space=SPACE), tiny_teacher(1, range(5, 10), space=SPACE)]


def tiny_conv4() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("conv4", num_classes=5, width=8)


def trainer(inverter: Inverter, meta: MetaLearner, steps: int = 3) -> tuple[ECITrainer, list[dict]]:
    """``steps`` ECI outer steps; the switch fires from step 2 on (reversed outer loss)."""
    config = RunConfig(device="cpu", train={"way": 5, "shot": 1, "query": 2, "episode_batch": 2,
                                            "cuda_graph": False})
    curriculum = get_host().create("curriculum", "gradient-switch", {"start": 1, "window": 1})
    generator = torch.Generator().manual_seed(0)
    zoo = teachers()
    inverter.setup(zoo, 3, torch.device("cpu"), generator, inversion_loss())
    built = ECITrainer(config, None, torch.device("cpu"), zoo, meta, inverter, curriculum, SPACE,
                       generator=generator)
    return built, [built.outer_step(step) for step in range(1, steps + 1)]


def builtin_maml() -> MetaLearner:
    meta = get_host().create("meta_learner", "maml", {"cpu_workers": 1})
    meta.setup(tiny_conv4(), torch.device("cpu"))
    return meta


def meta_test(learner: MetaLearner, calibrator: Calibrator | None = None, mode: str = "auto"):
    split = synthetic_split(num_classes=10, per_class=6, size=32)
    tasks = make_task_list(split, 5, 1, 2, 4, seed=0)
    return evaluate(learner, tasks, split, "cpu", calibrator, batch_tasks=2, mode=mode)


def finite_numbers(record: dict) -> bool:
    return all(math.isfinite(v) for v in record.values() if isinstance(v, float))


def drive_inverter(name: str, tmp_path: Path) -> None:
    inverter = get_host().create("inverter", name)
    built, records = trainer(inverter, builtin_maml())
    before = [x.clone() for x in inverter.teacher_images()]
    record = built.outer_step(4)
    assert all(finite_numbers(r) for r in [*records, record]) and "inv_total" in record
    assert any(r["switch"] for r in records), "the reversed outer loss was never passed"
    images = inverter.teacher_images()
    assert [tuple(x.shape) for x in images] == [(5, 3, 3, 32, 32), (5, 3, 3, 32, 32)]
    assert any(not torch.equal(a, b) for a, b in zip(before, images)), "the memory did not move"
    assert all(p.grad is None or torch.isfinite(p.grad).all()
               for p in built.meta.model.parameters())


def drive_meta_learner(name: str, tmp_path: Path) -> None:
    learner = get_host().create("meta_learner", name)
    learner.setup(tiny_conv4(), torch.device("cpu"))
    before = {k: v.detach().clone() for k, v in learner.params().items()}
    _, records = trainer(get_host().create("inverter", "deepinv", {"cpu_workers": 1}), learner)
    assert all(finite_numbers(r) for r in records)
    assert any(not torch.equal(before[k], v) for k, v in learner.params().items()), "no update"
    batched, per_task = meta_test(learner), meta_test(learner, mode="per_task")
    assert 0 <= batched.accuracy <= 100 and batched.n_tasks == 4
    assert batched.accuracies == pytest.approx(per_task.accuracies)
    assert learner.head_names() and learner.head_names() < set(learner.params())


def drive_calibrator(name: str, tmp_path: Path) -> None:
    calibrator = get_host().create("calibrator", name)
    calibrator.setup(inversion_loss())
    learner = builtin_maml()
    split = synthetic_split(num_classes=10, per_class=6, size=32)
    task = next(iter(make_task_list(split, 5, 1, 2, 1, seed=0).batches(split, "cpu", 1)))
    params = learner.test_adapt(task.support[0], task.support_labels[0])
    with torch.no_grad():
        logits = calibrator.predict(learner, params, task.support[0], task.support_labels[0],
                                    task.query[0])
    assert logits.shape == (10, 5) and torch.isfinite(logits).all()
    result = meta_test(learner, None if calibrator.passthrough else calibrator)
    assert 0 <= result.accuracy <= 100 and result.n_tasks == 4


def drive_inversion_term(name: str, tmp_path: Path) -> None:
    term = get_host().create("inversion_term", name)
    teacher = teachers()[0]
    images = torch.randn(10, 3, 32, 32, requires_grad=True)
    logits, stats = teacher_view(teacher.model, teacher.bn_layers)(images)
    targets = torch.arange(5).repeat_interleave(2)
    value = term(InversionContext(teacher, images, images, logits, targets, stats))
    assert value.shape == () and torch.isfinite(value)
    if value.requires_grad:
        (grad,) = torch.autograd.grad(value, images, allow_unused=True)
        assert grad is None or torch.isfinite(grad).all()

    # ICFIL: no teacher, the adapted meta-model's pass, tasks under vmap
    model = tiny_conv4().eval()  # batch statistics cannot update under vmap

    def icfil_pass(x: torch.Tensor) -> torch.Tensor:
        ctx = InversionContext(None, x, x, model(x), targets, [])
        return term(ctx).reshape(())

    values = torch.func.vmap(icfil_pass)(torch.randn(2, 10, 3, 32, 32))
    assert values.shape == (2,) and torch.isfinite(values).all()


def drive_curriculum(name: str, tmp_path: Path) -> None:
    curriculum = get_host().create("curriculum", name)
    scales = []
    for step in range(1, 301):
        scales.append(curriculum.adversarial_scale(step))
        curriculum.observe(step, 0.5)
    assert all(isinstance(s, (int, float)) and math.isfinite(s) and s >= 0 for s in scales)
    again = get_host().create("curriculum", name)
    again.load_state_dict(curriculum.state_dict())
    assert again.adversarial_scale(301) == curriculum.adversarial_scale(301)


def drive_initializer(name: str, tmp_path: Path) -> None:
    initializer = get_host().create("initializer", name)
    zoo = teachers()
    model = tiny_teacher(7, range(5), space=SPACE).model.requires_grad_(True)
    initializer.initialize(model, zoo)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(torch.equal(p, q) for p, q in zip(model.parameters(), zoo[0].model.parameters())) \
        or not initializer.needs_teachers or name != "doc-firstteacher"
    try:  # no teachers: fine, or a one-line ValueError
        initializer.initialize(tiny_teacher(8, range(5), space=SPACE).model, [])
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)


def drive_dataset(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("meta_train", "meta_val", "meta_test"):
        labels = np.repeat(np.arange(3) * 7, 4)  # any integer labels
        images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
        np.savez(tmp_path / f"{split}.npz", images=images, labels=labels)
    reader = get_host().create("dataset", name, {"root": str(tmp_path)})
    data = reader.load("meta_test")
    assert data.images.dtype == torch.uint8 and data.images.shape == (12, 3, 32, 32)
    assert sorted(set(data.labels.tolist())) == [0, 1, 2] and len(data.class_names) == 3
    missing = get_host().create("dataset", name, {"root": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="nowhere"):
        missing.load("meta_test")


DRIVERS = {"inverter": drive_inverter, "meta_learner": drive_meta_learner,
           "calibrator": drive_calibrator, "inversion_term": drive_inversion_term,
           "curriculum": drive_curriculum, "initializer": drive_initializer,
           "dataset": drive_dataset}


@pytest.mark.parametrize(("doc", "line", "code"), BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_documented_plugins_import_only_the_public_api(doc, line, code):
    """What the pages teach is what tests/plugins/test_boundary.py demands of
    plugin modules (a block with test functions is test code: exempt)."""
    tree = ast.parse(code)
    if any(isinstance(n, ast.FunctionDef) and n.name.startswith("test_") for n in tree.body):
        return
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module] + \
        [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    outside = [m for m in imported if m.startswith("purer") and m not in ("purer", "purer.api")]
    assert not outside, f"docs/{doc}:{line} imports {outside}; plugins import purer.api only"


def test_the_pages_show_every_kind_of_component():
    shown = {kind for doc, line, code in BLOCKS if doc == "interfaces.md"
             for kind, _ in components(load(doc, line, code))}
    assert shown == set(DRIVERS) == set(INTERFACES.values())


@pytest.mark.parametrize(("doc", "line", "code"), BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_documented_component_runs(doc, line, code, register_plugin, tmp_path):
    module = load(doc, line, code)
    registered = register(module, register_plugin)
    assert registered, f"docs/{doc}:{line}: the block registers nothing"
    for kind, names in registered.items():
        for name in names:
            DRIVERS[kind](name, tmp_path)


@pytest.mark.slow  # a fresh interpreter imports torch: 5-15 s
def test_the_example_plugins_own_tests_pass():
    folder = REPO / "examples" / "purer-example-plugin"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
