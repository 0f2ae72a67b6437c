import dataclasses
import enum
from pathlib import Path
from typing import Literal

import pytest

from cxrpipe.config import ConfigError, build, load_params, save_config, section, to_dict


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Inner:
    eps: float = 1.0
    kind: Literal["margin", "infonce"] = "margin"


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    size: int = 8
    views: tuple[str, ...] = ("AP", "PA")
    color: Color = Color.RED
    path: Path = Path("data")
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: int | None = None


def test_build_nested_and_coerces():
    cfg = build(Outer, {"name": "x", "size": 3, "views": ["PA"], "color": "blue", "inner": {"eps": 2}})
    assert cfg == Outer(name="x", size=3, views=("PA",), color=Color.BLUE, inner=Inner(eps=2.0))
    assert isinstance(cfg.inner.eps, float)


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"name": "x", "sise": 3}, "unknown key(s) ['sise']"),
        ({}, "'name' is required"),
        ({"name": "x", "size": "three"}, "'size': expected an integer"),
        ({"name": "x", "size": "2.5"}, "'size': expected an integer"),
        ({"name": "x", "inner": {"eps": "1e-3x"}}, "'inner.eps': expected a number"),
        ({"name": "x", "inner": {"eps": "nan"}}, "'inner.eps': expected a number"),
        ({"name": "x", "size": True}, "'size': expected an integer"),
        ({"name": "x", "inner": {"kind": "hinge"}}, "'inner.kind': 'hinge' is not one of"),
        ({"name": "x", "color": "green"}, "'color': 'green' is not one of"),
        ({"name": "x", "inner": {"epss": 1}}, "'inner': unknown key(s) ['epss']"),
    ],
)
def test_build_rejects_bad_params(data, msg):
    with pytest.raises(ConfigError) as e:
        build(Outer, data)
    assert msg in str(e.value)


def test_numbers_written_by_hand_as_yaml_strings_are_numbers(tmp_path):
    """YAML 1.1 reads `1e-3` (no dot) as the string "1e-3": a hand-written learning rate must still work."""
    p = tmp_path / "params.yaml"
    p.write_text("stage:\n  name: a\n  size: 1e3\n  inner:\n    eps: 1e-3\n")
    import yaml

    assert yaml.safe_load(p.read_text())["stage"]["inner"]["eps"] == "1e-3"  # what YAML gives
    cfg = section(p, "stage", Outer)
    assert cfg.inner.eps == 0.001 and isinstance(cfg.inner.eps, float)
    assert cfg.size == 1000 and isinstance(cfg.size, int)
    assert build(Outer, {"name": "x", "maybe": "7"}).maybe == 7  # inside a union too
    assert build(Outer, {"name": "1e3"}).name == "1e3"  # a string field stays a string


def test_section_from_file_and_round_trip(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("stage:\n  name: a\n  inner:\n    eps: 0.5\n")
    cfg = section(p, "stage", Outer)
    assert cfg.inner.eps == 0.5
    assert section(load_params(p), "stage.inner", Inner) == Inner(eps=0.5)
    with pytest.raises(ConfigError, match="section 'other' is missing"):
        section(p, "other", Outer)
    save_config(cfg, tmp_path / "out" / "config.json")
    import json

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved == to_dict(cfg)
    assert build(Outer, saved) == cfg  # the saved config rebuilds the same dataclass
