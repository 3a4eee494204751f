"""Typed configs: defaults, YAML, overrides, and one-line errors naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from medvtc.common.config import load_config, parse_override, save_config, to_dict
from medvtc.common.errors import ConfigError
from medvtc.common.trainer import TrainConfig
from medvtc.tasks import TASKS, get_task


@dataclass
class Inner:
    lr: float = 0.1
    mode: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    limit: int | None = None


@dataclass
class Outer:
    name: str = "x"
    budget: float | int = 8
    inner: Inner = field(default_factory=lambda: Inner(lr=0.5))


def test_defaults_then_overrides():
    cfg = load_config(Outer, None, ["inner.mode=b", "inner.sizes=[3,4,5]", "budget=0.25", "name=7"])
    assert cfg.inner.mode == "b" and cfg.inner.sizes == [3, 4, 5]
    assert cfg.budget == 0.25 and isinstance(cfg.budget, float)
    assert cfg.name == "7"
    # A partial override of a nested section keeps that section's own defaults (lr=0.5, not 0.1).
    assert cfg.inner.lr == 0.5
    assert load_config(Outer, None, ["budget=16"]).budget == 16
    assert isinstance(load_config(Outer, None, ["budget=16"]).budget, int)
    assert load_config(Outer, None, ["inner.limit=null"]).inner.limit is None
    assert load_config(Outer, None, ["inner.limit=3"]).inner.limit == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lrr=1", "unknown config key inner.lrr; valid keys at inner: limit, lr, mode, sizes"),
        ("nope=1", "unknown config key nope; valid keys at the top level: budget, inner, name"),
        ("inner.mode=c", "bad value 'c' for inner.mode; expected one of: 'a', 'b'"),
        ("inner.lr=fast", "bad value 'fast' for inner.lr; expected a number"),
        ("inner.sizes=[1,x]", "bad value 'x' for inner.sizes[1]; expected an integer"),
        ("inner=3", "bad value 3 for inner; expected a mapping of Inner keys"),
        ("novalue", "bad override 'novalue'; expected key.sub=value"),
    ],
)
def test_errors_name_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, [override])
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_yaml_file_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  mode: b\n")
    cfg = load_config(Outer, path, ["inner.lr=0.01"])
    assert (cfg.name, cfg.inner.mode, cfg.inner.lr) == ("run", "b", 0.01)
    saved = tmp_path / "saved.yaml"
    save_config(cfg, saved)
    assert load_config(Outer, saved) == cfg


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, listy)


def test_validate_hook_turns_value_errors_into_config_errors():
    with pytest.raises(ConfigError, match="train: max_steps must be >= 1, got 0"):
        load_config(_WithTrain, None, ["train.max_steps=0"])


@dataclass
class _WithTrain:
    train: TrainConfig = field(default_factory=TrainConfig)


def test_parse_override_types():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=1e-3") == ("a", 1e-3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=text with = sign") == ("a", "text with = sign")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shipped_config_files_equal_the_defaults(name):
    """medvtc/configs/<task>.yaml documents the defaults: loading it must give exactly the dataclass defaults."""
    task = get_task(name)
    path = task.default_config_path()
    assert path is not None, f"medvtc/configs/{name}.yaml is missing"
    assert to_dict(load_config(task.config_class, path)) == to_dict(task.config_class())
