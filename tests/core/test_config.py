"""The run configuration (purer/config.py): defaults, TOML files, ``--set``,
validation of plugin sections against each plugin's own options, merge
semantics and the TOML round trip."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from purer.config import (
    PLUGIN_SECTIONS,
    RunConfig,
    build_config,
    load_preset,
    load_toml,
    merge,
    parse_assignment,
    preset_names,
    to_toml,
)
from purer.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib



def deepinv_keys(host: Any) -> str:
    return ", ".join(host.get("inverter", "deepinv").Options.model_fields)


def error_of(*layers: dict[str, Any], assignments: tuple[str, ...] = (), host: Any = None) -> str:
    with pytest.raises(ConfigError) as exc:
        build_config(*layers, assignments=assignments, host=host)
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------- defaults
def test_schema_defaults_are_the_papers():
    config = RunConfig()
    assert (config.seed, config.device, config.out, config.name) == (0, "auto", "runs", None)
    names = {section: getattr(config, section).name for section in PLUGIN_SECTIONS}
    assert names == {"data": "synthetic-shapes", "inverter": "deepinv",
                     "curriculum": "gradient-switch", "meta": "maml", "init": "random",
                     "calibrator": "none"}
    train = config.train
    assert (train.steps, train.episode_batch, train.way, train.shot, train.query) == (60_000, 4, 5, 1, 15)
    assert (config.zoo.path, config.zoo.build.scenario, config.zoo.build.teachers) == (None, "ss", 13)
    assert (config.eval.tasks, config.eval.split) == (600, "meta_test")


def test_resolved_defaults_fill_in_plugin_options(purer_host):
    config = build_config(host=purer_host)
    options = config.curriculum.options
    assert (options.start, options.window, options.scale) == (4000, 6, 10.0)
    assert config.inverter.options.lr == 0.25
    assert config.inversion.terms == {"ce": 1.0, "tv": 1e-4, "l2": 1e-5, "bn": 0.01}
    assert config.inversion.options_of("bn").first_multiplier == 1.0
    assert config.meta.options.inner_lr == 0.01 and config.meta.options.outer_lr == 0.001
    assert config.init.option_dict() == {} and config.calibrator.option_dict() == {}
    # validated once: the instance the host builds components from
    assert purer_host.create("curriculum", config.curriculum.name,
                             config.curriculum.options).options is options


def test_unresolved_config_keeps_only_what_was_given():
    config = build_config({"curriculum": {"name": "gradient-switch", "start": 7}})
    assert config.curriculum.options == {"start": 7}


def test_device_is_checked():
    assert build_config({"device": "cuda:1"}).device == "cuda:1"
    assert "device must be auto, cpu, cuda[:N] or mps, not 'tpu'" in error_of({"device": "tpu"})


# --------------------------------------------------------------------- TOML files
def test_toml_file_loads_and_overrides_defaults(tmp_path, purer_host):
    path = tmp_path / "run.toml"
    path.write_text('seed = 3\n[train]\nsteps = 12\nshot = 5\n'
                    '[curriculum]\nname = "gradient-switch"\nwindow = 2\n')
    config = build_config(load_toml(path), host=purer_host)
    assert (config.seed, config.train.steps, config.train.shot, config.train.way) == (3, 12, 5, 5)
    assert config.curriculum.options.window == 2 and config.curriculum.options.start == 4000


def test_toml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_toml(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nsteps = 1\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML: "):
        load_toml(broken)


def test_unknown_keys_in_a_file_are_errors(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[train]\nstepz = 3\n")
    # the message lists what the section takes, as plugin option errors do
    train_keys = ", ".join(RunConfig.model_fields["train"].annotation.model_fields)
    assert error_of(load_toml(path)) == f"train.stepz: unknown key; train takes: {train_keys}"
    assert error_of({"colour": "red"}).startswith(
        "colour: unknown key; the top level takes: seed, device, ")
    message = error_of({"zoo": {"build": {"teacher": 3}}})
    assert message.startswith("zoo.build.teacher: unknown key; zoo.build takes: ")
    assert "teachers" in message.split("takes: ")[1].split(", ")


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_validates(preset, purer_host):
    config = build_config(load_preset(preset), host=purer_host)
    # the paper's presets keep its curriculum; fast-* ones may run without it (EI)
    assert config.curriculum.name == "gradient-switch" or preset.startswith("fast-")


def test_paper_presets_match_table_1(purer_host):
    for shot in (1, 5):
        config = build_config(load_preset(f"paper-cifar-fs-{shot}shot"), host=purer_host)
        assert (config.data.name, config.train.shot, config.eval.shots) == ("cifar-fs", shot, [shot])
        assert (config.train.steps, config.zoo.build.teachers) == (60_000, 13)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError) as exc:
        load_preset("nope")
    assert str(exc.value) == ("--preset: unknown preset 'nope' (available: "
                              f"{', '.join(preset_names())})")
    assert {"quickstart", "paper-cifar-fs-1shot", "paper-cifar-fs-5shot"} <= set(preset_names())


# --------------------------------------------------------------------- --set
@pytest.mark.parametrize("text, path, value", [
    ("train.steps=500", ["train", "steps"], 500),
    ("inverter.lr=1e-3", ["inverter", "lr"], 1e-3),
    ("train.max_memory_abs=2.5", ["train", "max_memory_abs"], 2.5),
    ("zoo.build.augment=true", ["zoo", "build", "augment"], True),
    ("eval.shots=[1, 5]", ["eval", "shots"], [1, 5]),
    ('zoo.build.arch=["conv4", "cifar_resnet10"]', ["zoo", "build", "arch"], ["conv4", "cifar_resnet10"]),
    ("inversion.terms={ce = 1, tv = 0}", ["inversion", "terms"], {"ce": 1, "tv": 0}),
    ('inversion.terms={"ce": 1}', ["inversion", "terms"], {"ce": 1}),
    ("name=my run", ["name"], "my run"),
    ("device=cuda:0", ["device"], "cuda:0"),
    ('name="42"', ["name"], "42"),
    ("name=42", ["name"], 42),
    ("name=a=b", ["name"], "a=b"),
    ("name=", ["name"], ""),
    ("train.steps = 7", ["train", "steps"], 7),
])
def test_parse_assignment_reads_toml_values(text, path, value):
    got_path, got = parse_assignment(text)
    assert got_path == path
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text, message", [
    ("train.steps", "--set 'train.steps': expected section.key=value"),
    ("=3", "--set '=3': empty key"),
])
def test_parse_assignment_errors(text, message):
    with pytest.raises(ConfigError) as exc:
        parse_assignment(text)
    assert str(exc.value) == message


def test_set_values_are_typed_by_the_schema(purer_host):
    config = build_config(load_preset("quickstart"), host=purer_host, assignments=(
        "train.steps=9", "zoo.build.augment=true", "eval.shots=[1, 5]", "curriculum.scale=2",
        "name=42run"))
    assert config.train.steps == 9 and config.zoo.build.augment is True
    assert config.eval.shots == [1, 5] and config.name == "42run"
    assert config.curriculum.options.scale == 2.0
    assert isinstance(config.curriculum.options.scale, float)


def test_set_errors_name_the_key_and_the_value():
    assert error_of(assignments=("train.steps=abc",)) == (
        "train.steps: Input should be a valid integer, unable to parse string as an integer "
        "(got 'abc')")
    assert error_of(assignments=("zoo.build.scenario=xx",)) == (
        "zoo.build.scenario: must be one of 'ss', 'sh' or 'mh' (got 'xx')")
    assert error_of({"seed": 1}, assignments=("seed.value=1",)) == (
        "--set seed.value: 'seed' is not a section")


# --------------------------------------------------------------------- plugin sections
def test_unknown_plugin_option_lists_the_allowed_keys(purer_host):
    message = error_of({"inverter": {"name": "deepinv", "foo": 1}}, host=purer_host)
    assert message == f"inverter.foo: unknown key; deepinv takes: {deepinv_keys(purer_host)}"
    assert "lr, betas, jitter" in message


def test_inversion_terms_are_checked_against_the_registry(purer_host):
    assert error_of({"inversion": {"terms": {"ce": 1.0, "nope": 1.0}}}, host=purer_host).startswith(
        "inversion.terms: unknown inversion term 'nope'")
    assert error_of({"inversion": {"term_options": {"bn": {"x": 1}}}}, host=purer_host).startswith(
        "inversion.term_options.bn.x: unknown key")
    assert error_of({"inversion": {"terms": {"ce": -1.0}}}, host=purer_host).startswith(
        "inversion.terms")


def test_option_of_a_plugin_without_options(purer_host):
    message = error_of({"curriculum": {"name": "none", "start": 3}}, host=purer_host)
    assert message == "curriculum.start: unknown key; none takes: no options"


def test_bad_plugin_value_names_the_key_and_the_allowed_values(purer_host):
    assert error_of({"inverter": {"name": "deepinv", "precision": "fp16"}}, host=purer_host) == (
        "inverter.precision: must be one of 'fp32' or 'bf16' (got 'fp16')")
    assert error_of({"meta": {"name": "maml", "test_batching": "fast"}}, host=purer_host) == (
        "meta.test_batching: must be one of 'auto', 'vmap' or 'loop' (got 'fast')")
    assert error_of({"curriculum": {"name": "gradient-switch", "window": 0}}, host=purer_host) == (
        "curriculum.window: Input should be greater than or equal to 1 (got 0)")


def test_unknown_plugin_name_lists_the_installed_ones(purer_host):
    assert error_of({"inverter": {"name": "nope"}}, host=purer_host) == (
        "inverter.name: unknown inverter 'nope' (installed: deepinv, generator, meta-generator)")
    message = error_of(assignments=("curriculum.name=nope",), host=purer_host)
    assert message.startswith("curriculum.name: unknown curriculum 'nope' (installed: ")
    assert "gradient-switch" in message and "none" in message
    message = error_of(assignments=("meta.name=nope",), host=purer_host)
    assert message.startswith("meta.name: unknown meta learner 'nope' (installed: ")
    assert "maml" in message and "reptile" in message


def test_set_an_option_of_the_default_plugin(purer_host):
    config = build_config(load_preset("quickstart"), assignments=("inverter.lr=0.5",),
                          host=purer_host)
    assert config.inverter.name == "deepinv" and config.inverter.options.lr == 0.5
    assert error_of(assignments=("inverter.lr=abc",), host=purer_host).startswith("inverter.lr: ")
    assert error_of(assignments=("inverter.foo=1",), host=purer_host) == (
        f"inverter.foo: unknown key; deepinv takes: {deepinv_keys(purer_host)}")


# --------------------------------------------------------------------- merge semantics
def test_merge_is_deep_for_plain_sections():
    base = {"train": {"steps": 1, "shot": 5}, "zoo": {"build": {"teachers": 3, "epochs": 2}}}
    update = {"train": {"steps": 2}, "zoo": {"build": {"epochs": 9}}}
    assert merge(base, update) == {"train": {"steps": 2, "shot": 5},
                                   "zoo": {"build": {"teachers": 3, "epochs": 9}}}
    assert base["train"] == {"steps": 1, "shot": 5}  # inputs are not modified


def test_merge_keeps_options_of_the_same_plugin():
    base = {"curriculum": {"name": "gradient-switch", "start": 5, "window": 2}}
    update = {"curriculum": {"name": "gradient-switch", "window": 3}}
    assert merge(base, update) == {"curriculum": {"name": "gradient-switch", "start": 5, "window": 3}}


def test_choosing_another_plugin_drops_the_old_options(purer_host):
    base = {"curriculum": {"name": "gradient-switch", "start": 5}}
    assert merge(base, {"curriculum": {"name": "none"}}) == {"curriculum": {"name": "none"}}
    config = build_config(load_preset("quickstart"), {"curriculum": {"name": "none"}}, host=purer_host)
    assert (config.curriculum.name, config.curriculum.option_dict()) == ("none", {})


def test_set_name_drops_the_old_options_and_set_options_after_it_apply(purer_host):
    config = build_config(load_preset("quickstart"), host=purer_host,
                          assignments=("curriculum.name=none",))
    assert (config.curriculum.name, config.curriculum.option_dict()) == ("none", {})
    config = build_config(load_preset("quickstart"), host=purer_host,
                          assignments=("curriculum.name=gradient-switch", "curriculum.window=2"))
    assert config.curriculum.options.start == 100  # same plugin: the preset's options stay
    assert config.curriculum.options.window == 2


def test_later_layers_win():
    config = build_config({"seed": 1, "train": {"steps": 1}}, {"seed": 2},
                          assignments=("seed=3",))
    assert (config.seed, config.train.steps) == (3, 1)


def test_options_given_without_a_name_belong_to_the_default_plugin(purer_host):
    unnamed = {"curriculum": {"start": 5}}
    config = build_config(unnamed, {"curriculum": {"name": "none"}}, host=purer_host)
    assert config.curriculum.option_dict() == {}
    config = build_config(unnamed, assignments=("curriculum.name=gradient-switch",),
                          host=purer_host)
    assert config.curriculum.options.start == 5


# --------------------------------------------------------------------- to_toml
def round_trip(config: RunConfig, host: Any) -> RunConfig:
    return build_config(tomllib.loads(to_toml(config)), host=host)


@pytest.mark.parametrize("preset", [None, *preset_names()])
def test_to_toml_round_trip(preset, purer_host):
    config = build_config(load_preset(preset) if preset else {}, host=purer_host)
    assert round_trip(config, purer_host) == config


def test_to_toml_round_trip_of_non_defaults(purer_host):
    config = build_config({
        "name": 'run "quoted" \\ back-slashed, été',
        "device": "cpu",
        "zoo": {"path": "/tmp/zoo dir", "build": {"arch": ["conv4", "cifar_resnet10"],
                                                  "arch_kwargs": {"drop_rate": 0.1}}},
        "train": {"meta_arch_kwargs": {"width": 32}, "steps": 0},
        "eval": {"way": 10, "shots": [1, 5], "baselines": []},
        "inverter": {"name": "deepinv", "betas": [0.5, 0.9]},
        "inversion": {"terms": {"ce": 1.0, "bn": 0.0}, "term_options": {"bn": {"first_multiplier": 2.0}}},
        "meta": {"name": "maml", "test_inner_steps": 10},
        "curriculum": {"name": "none"},
    }, host=purer_host)
    assert round_trip(config, purer_host) == config


@pytest.mark.parametrize("layer", [
    {"train": {"max_memory_abs": float("inf")}},
    {"name": "emoji \U0001F600"},
    {"train": {"meta_arch_kwargs": {"drop.rate": 0.1}}},
    {"train": {"meta_arch_kwargs": {"blocks": [{"width": 8}]}}},
], ids=["inf", "astral", "dotted-key", "list-of-tables"])
def test_to_toml_round_trip_of_awkward_values(layer, purer_host):
    config = build_config(layer, host=purer_host)
    assert round_trip(config, purer_host) == config
