"""Config loading, dotted overrides and their errors."""

from pathlib import Path

import pytest

from wsss.config import ConfigError, load_config, parse_override_args

REPO = Path(__file__).resolve().parents[1]


def test_msrc_recipe_values():
    cfg = load_config(REPO / "configs/msrc/cam.yaml")
    assert cfg.method_name == "cam"
    assert cfg.model.backbone == "efficientnet_lite0" and cfg.model.output_stride == 16
    assert cfg.data.crop_size == 320
    assert cfg.inference.scales == [1.0, 0.5, 1.5, 2.0]


def test_the_five_required_overrides():
    args = ["--data.root", "/x", "--data.limit", "24", "--trainer.max_epochs=1", "--output_dir", "/tmp/o"]
    cfg = load_config(REPO / "configs/msrc/cam.yaml", parse_override_args(args))
    assert cfg.data.root == "/x" and cfg.data.limit == 24
    assert cfg.trainer["max_epochs"] == 1 and cfg.output_dir == "/tmp/o"
    # untouched values survive
    assert cfg.trainer["precision"] == "32-true" and cfg.data.crop_size == 320


def test_list_override_is_parsed_as_yaml():
    cfg = load_config(None, parse_override_args(["--inference.scales", "[1.0, 0.5]"]))
    assert cfg.inference.scales == [1.0, 0.5]


def test_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  rooot: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.rooot"):
        load_config(p)
    with pytest.raises(ConfigError, match="unknown top-level"):
        load_config(None, {"dta.root": "x"})


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="data.limit"):
        load_config(None, {"data.limit": 0})
    with pytest.raises(ConfigError, match="needs a value"):
        parse_override_args(["--data.root"])
    bad = tmp_path / "b.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_every_shipped_config_loads():
    for p in sorted((REPO / "configs").rglob("*.yaml")):
        cfg = load_config(p)
        assert cfg.method_name, p
