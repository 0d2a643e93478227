"""The example plugin's own tests: ``python -m pytest`` in the plugin's folder.

They pass whether the plugin is installed (its entry point loads it) or not
(the module beside the tests is registered inline, for one test at a time).
"""

from __future__ import annotations

import purer_example_plugin
import pytest
import torch

from purer.api import ConfigError, InputSpace, InversionContext, Teacher
from purer.plugins import get_host
from purer.testing import inversion_loss, setup_inverter, tiny_teacher

SPACE = InputSpace(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture
def host(register_plugin):
    if "example" not in get_host().plugins:
        register_plugin(purer_example_plugin, name="example")
    return get_host()


def test_every_k_fires_on_multiples_of_k(host):
    curriculum = host.create("curriculum", "every-k", {"k": 3})
    assert [curriculum.adversarial_scale(s) for s in range(7)] == [0, 0, 0, 10.0, 0, 0, 10.0]
    assert host.create("curriculum", "every-k").options.k == 100


def test_a_bad_option_names_the_key(host):
    wanted = r"^curriculum\.kk: unknown key; every-k takes: k, scale$"
    with pytest.raises(ConfigError, match=wanted):
        host.create("curriculum", "every-k", {"kk": 3})


def saturation(host, pixels: torch.Tensor, teacher: Teacher | None) -> torch.Tensor:
    images = (pixels - 0.5) / 0.25  # normalised in SPACE
    ctx = InversionContext(teacher, images, images, torch.zeros(1, 1), torch.zeros(1), [])
    return host.create("inversion_term", "saturation")(ctx)


def test_saturation_penalises_only_pixels_outside_the_range(host):
    teacher = Teacher("t", torch.nn.Identity(), [0], ["c"], SPACE)
    inside = torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    assert float(saturation(host, inside, teacher)) == 0.0
    outside = inside.clone()
    outside[0, 0, 0, 0] = 1.5  # 0.5 above the valid range
    assert float(saturation(host, outside, teacher)) == pytest.approx(0.25 / outside.numel())


def test_saturation_is_zero_in_icfil_where_there_is_no_teacher(host):
    outside = torch.full((2, 1, 3, 8, 8), 2.0)
    assert float(saturation(host, outside[0], None)) == 0.0
    values = torch.func.vmap(lambda x: saturation(host, x, None))(outside)  # ICFIL batches tasks
    assert values.tolist() == [0.0, 0.0]


def test_saturation_joins_the_runs_inversion_loss(host):
    loss = inversion_loss({"ce": 1.0, "saturation": 0.1})
    inverter = setup_inverter("deepinv", [tiny_teacher(0, [0, 1, 2])], per_class=2, inversion=loss,
                              cpu_workers=1)
    logged = inverter.step(None, {k: v for k, v in inverter.draw().items()})
    assert set(logged) >= {"ce", "saturation", "total"}
    assert float(logged["saturation"]) > 0  # N(0, 1) memory: many pixels outside [0, 1]
