"""Config loading: bases, type checks, requires, dotted overrides and their errors; shipped configs."""

from pathlib import Path

import pytest

from wsss.config import ConfigError, dump_config, load_config, parse_override_args

REPO = Path(__file__).resolve().parents[1]


def _w(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_msrc_recipe_values():
    cfg = load_config(REPO / "configs/msrc/cam.yaml")
    assert cfg.method_name == "cam"
    assert cfg.model.backbone == "efficientnet_lite0" and cfg.model.output_stride == 16
    assert cfg.data.crop_size == 320
    assert cfg.inference.scales == [1.0, 0.5, 1.5, 2.0]
    # the recipe chosen on val by the fidelity ablation (benchmarks/ablation-cam.md)
    assert (cfg.model.feature_layer, cfg.model.classifier_init, cfg.model.normalization) == ("last_stage", "torch_default", "imagenet")
    assert cfg.model.bn_mode == "batch_stats" and cfg.optim.momentum == 1e-4 and cfg.optim.lr == 0.1
    assert cfg.data.train_unlabelled is True
    voc = load_config(REPO / "configs/voc12/cam.yaml")
    assert voc.optim.momentum == 1e-4 and voc.model.classifier_init == "torch_default" and voc.model.bn_mode is None
    assert cfg.requires == {} and cfg.overwrite is False and cfg.overrides == {}


def test_the_five_required_overrides():
    args = ["--data.root", "/x", "--data.limit", "24", "--trainer.max_epochs=1", "--output_dir", "/tmp/o"]
    cfg = load_config(REPO / "configs/msrc/cam.yaml", parse_override_args(args))
    assert cfg.data.root == "/x" and cfg.data.limit == 24
    assert cfg.trainer["max_epochs"] == 1 and cfg.output_dir == "/tmp/o"
    # untouched values survive
    assert cfg.trainer["precision"] == "32-true" and cfg.data.crop_size == 320
    # the applied overrides are kept (for dependency runs), but are not part of to_dict()
    assert cfg.overrides == {"data.root": "/x", "data.limit": 24, "trainer.max_epochs": 1, "output_dir": "/tmp/o"}
    assert "overrides" not in cfg.to_dict()


def test_list_override_is_parsed_as_yaml():
    cfg = load_config(None, parse_override_args(["--inference.scales", "[1.0, 0.5]"]))
    assert cfg.inference.scales == [1.0, 0.5]


def test_unknown_key_names_file_and_key(tmp_path):
    p = _w(tmp_path / "bad.yaml", "data:\n  rooot: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.rooot"):
        load_config(p)
    with pytest.raises(ConfigError, match="unknown top-level"):
        load_config(None, {"dta.root": "x"})
    # an unknown key inherited from a base names the base, not the including file
    _w(tmp_path / "child.yaml", "base: bad.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"^\S*bad\.yaml: unknown key"):
        load_config(tmp_path / "child.yaml")
    with pytest.raises(ConfigError, match="'overrides' is not a config key"):
        load_config(_w(tmp_path / "o.yaml", "overrides: {}\n"))


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="data.limit"):
        load_config(None, {"data.limit": 0})
    with pytest.raises(ConfigError, match="needs a value"):
        parse_override_args(["--data.root"])
    bad = _w(tmp_path / "b.yaml", "data: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


# ----------------------------------------------------------------------------- base:


def test_base_deep_merges_dicts_and_replaces_lists(tmp_path):
    _w(tmp_path / "base.yaml", "method: {name: cam, a: 1, b: {x: 1, y: 2}}\n"
       "data: {crop_size: 100, resize_long: [10, 20], batch_size: 4}\ninference: {scales: [1.0, 0.5, 2.0]}\n"
       "trainer: {max_epochs: 3}\n")
    child = _w(tmp_path / "child.yaml", "base: base.yaml\nmethod: {b: {y: 5}, c: 3}\n"
               "data: {resize_long: [30, 40]}\ninference: {scales: [2.0]}\n")
    cfg = load_config(child)
    assert cfg.method == {"name": "cam", "a": 1, "b": {"x": 1, "y": 5}, "c": 3}  # nested merge
    assert cfg.data.resize_long == [30, 40] and cfg.inference.scales == [2.0]  # lists replaced, not merged
    assert cfg.data.crop_size == 100 and cfg.data.batch_size == 4  # base values kept
    assert cfg.trainer == {"max_epochs": 3, "accelerator": "auto", "devices": "auto", "strategy": "auto", "precision": "32-true"}
    assert cfg.source == str(child)  # the top file, not the base
    # overrides apply last, over both files
    cfg = load_config(child, {"method.b.x": 9, "data.crop_size": 64})
    assert cfg.method["b"] == {"x": 9, "y": 5} and cfg.data.crop_size == 64


def test_base_list_in_order_and_chain(tmp_path):
    _w(tmp_path / "a.yaml", "seed: 1\noutput_dir: from_a\ndata: {batch_size: 1}\n")
    _w(tmp_path / "b.yaml", "seed: 2\ndata: {crop_size: 2}\n")
    _w(tmp_path / "mid.yaml", "base: [a.yaml, b.yaml]\ndata: {num_workers: 0}\n")  # b after a
    top = _w(tmp_path / "top.yaml", "base: mid.yaml\noutput_dir: top\n")
    cfg = load_config(top)
    assert cfg.seed == 2 and cfg.output_dir == "top"
    assert (cfg.data.batch_size, cfg.data.crop_size, cfg.data.num_workers) == (1, 2, 0)


def test_base_paths_are_relative_to_the_including_file(tmp_path, monkeypatch):
    _w(tmp_path / "common/base.yaml", "seed: 7\n")
    _w(tmp_path / "recipes/sub/x.yaml", "base: ../../common/base.yaml\n")
    monkeypatch.chdir(tmp_path / "recipes")  # not the file's folder
    assert load_config("sub/x.yaml").seed == 7
    _w(tmp_path / "recipes/sub/y.yaml", "base: nothere.yaml\n")
    with pytest.raises(ConfigError, match=r"sub/y\.yaml: base 'nothere\.yaml' not found \(sub/nothere\.yaml\)"):
        load_config("sub/y.yaml")
    _w(tmp_path / "recipes/sub/z.yaml", "base: {a: 1}\n")
    with pytest.raises(ConfigError, match=r"z\.yaml: base must be a config path"):
        load_config("sub/z.yaml")


def test_base_cycle_names_the_files(tmp_path):
    _w(tmp_path / "a.yaml", "base: b.yaml\n")
    _w(tmp_path / "b.yaml", "base: c.yaml\n")
    _w(tmp_path / "c.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"base cycle: \S*a\.yaml -> \S*b\.yaml -> \S*c\.yaml -> \S*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    _w(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="base cycle"):
        load_config(tmp_path / "self.yaml")


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(("override", "message"), [
    ({"data.batch_size": "eight"}, "command line: data.batch_size must be an int, got 'eight'"),
    ({"data.batch_size": 8.0}, "data.batch_size must be an int, got 8.0"),
    ({"data.batch_size": True}, "data.batch_size must be an int, got True"),
    ({"optim.lr": "0.1x"}, "optim.lr must be a number, got '0.1x'"),
    ({"optim.lr": False}, "optim.lr must be a number, got False"),
    ({"data.hflip": 1}, "data.hflip must be a bool (true/false), got 1"),
    ({"data.hflip": "1"}, "data.hflip must be a bool (true/false), got '1'"),
    ({"model.backbone": 50}, "model.backbone must be a string, got 50"),
    ({"inference.scales": [1.0, "a"]}, "inference.scales must be a list of numbers, got [1.0, 'a']"),
    ({"inference.scales": 1.0}, "inference.scales must be a list of numbers, got 1.0"),
    ({"data.resize_long": [240, 400.5]}, "data.resize_long must be a list of ints, got [240, 400.5]"),
    ({"data.limit": "all"}, "data.limit must be an int or null, got 'all'"),
    ({"evaluation.threshold_from": 3}, "evaluation.threshold_from must be a string or null, got 3"),
    ({"data.color_jitter": [0.3]}, "data.color_jitter must be a mapping or null, got [0.3]"),
    ({"refine.crf": None}, "refine.crf must be a mapping, got None"),
    ({"overwrite": "yes"}, "overwrite must be a bool (true/false), got 'yes'"),
    ({"seed": 1.5}, "seed must be an int, got 1.5"),
    ({"trainer": [1]}, "section 'trainer' must be a mapping"),
    ({"method.name": 3}, "method.name must be a string, got 3"),
])
def test_type_errors_are_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/msrc/cam.yaml", override)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_types_accepted_and_coerced(tmp_path):
    cfg = load_config(None, {"optim.lr": 1, "inference.scales": [1, 0.5], "data.limit": None,
                             "evaluation.threshold_from": None, "data.color_jitter": {"hue": 0.1}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # ints accepted for floats
    assert cfg.inference.scales == [1.0, 0.5] and all(isinstance(s, float) for s in cfg.inference.scales)
    assert cfg.data.limit is None and cfg.evaluation.threshold_from is None and cfg.data.color_jitter == {"hue": 0.1}
    # a wrong type in a base names the base file
    _w(tmp_path / "base.yaml", "data:\n  batch_size: eight\n")
    child = _w(tmp_path / "child.yaml", "base: base.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"^\S*base\.yaml: data\.batch_size must be an int, got 'eight'$"):
        load_config(child)
    # ... and the including file fixes it
    _w(tmp_path / "fixed.yaml", "base: base.yaml\ndata: {batch_size: 4}\n")
    assert load_config(tmp_path / "fixed.yaml").data.batch_size == 4


# ----------------------------------------------------------------------------- requires / overwrite


def test_requires_resolved_relative_to_the_declaring_file(tmp_path, monkeypatch):
    _w(tmp_path / "cfg/dep.yaml", "seed: 1\n")
    _w(tmp_path / "cfg/common/base.yaml", "requires: {oc: ../dep.yaml, other: ../dep.yaml}\n")
    top = _w(tmp_path / "cfg/top.yaml", "base: common/base.yaml\nrequires: {other: null, seed: dep.yaml}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("cfg/top.yaml")
    assert cfg.requires == {"oc": "cfg/dep.yaml", "seed": "cfg/dep.yaml"}  # cwd-relative; null drops 'other'
    monkeypatch.chdir(tmp_path / "cfg/common")  # the file is not below the cwd: absolute
    assert load_config(top).requires["oc"] == str((tmp_path / "cfg/dep.yaml").resolve())
    monkeypatch.chdir(tmp_path)
    assert load_config("cfg/top.yaml", {"requires.x": "cfg/dep.yaml"}).requires["x"] == "cfg/dep.yaml"  # cwd-relative


def test_requires_errors(tmp_path):
    p = _w(tmp_path / "r.yaml", "requires: {oc: nothere.yaml}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: requires\.oc: config 'nothere\.yaml' not found"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"r2\.yaml: requires must be a mapping"):
        load_config(_w(tmp_path / "r2.yaml", "requires: [cam.yaml]\n"))
    with pytest.raises(ConfigError, match=r"command line: requires\.oc: config 'nothere\.yaml' not found"):
        load_config(None, {"requires.oc": "nothere.yaml"})


def test_overwrite_key():
    assert load_config(None, {"overwrite": True}).overwrite is True
    assert load_config(None).overwrite is False


# ----------------------------------------------------------------------------- shipped configs


def _non_base_lines(p: Path) -> int:
    return len(p.read_text().splitlines())


def test_every_shipped_config_resolves_and_is_short(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    bases = {Path("configs/msrc/cam.yaml"), Path("configs/voc12/cam.yaml")}
    files = sorted(Path("configs").rglob("*.yaml"))
    assert len(files) >= 14
    for p in files:
        cfg = load_config(p)
        assert cfg.method_name == p.stem.split("_")[0], p
        assert cfg.output_dir == f"runs/{p.parent.name}/{p.stem}", p
        for dep in cfg.requires.values():
            assert Path(dep).is_file() and Path(dep).parent == p.parent, (p, dep)
        assert "oc_checkpoint" not in cfg.method and "seed_source" not in cfg.method, p  # filled from requires
        if p not in bases:
            assert "base:" in p.read_text(), p
            assert _non_base_lines(p) <= 25, (p, _non_base_lines(p))
        # the printed form round-trips
        printed = _w(tmp_path / p, dump_config(cfg))
        a, b = cfg.to_dict(), load_config(printed).to_dict()
        a.pop("source"), b.pop("source")
        assert a == b, p


def test_shipped_values(monkeypatch):
    monkeypatch.chdir(REPO)
    cam = load_config("configs/msrc/cam.yaml")
    occse = load_config("configs/msrc/occse.yaml")
    assert occse.requires == {"oc": "configs/msrc/cam.yaml"}
    assert occse.data.crop_size == cam.data.crop_size == 320 and occse.optim == cam.optim
    assert occse.method["lambda_cse_from"] == 0.3 and occse.method["label_smoothing"] == 0.0
    poc = load_config("configs/msrc/poc.yaml")  # Puzzle-CAM + OC-CSE + LS
    assert poc.requires == {"oc": "configs/msrc/cam.yaml"}
    assert poc.method["tiles_per_side"] == 2 and poc.method["re_mask"] == "labels"
    assert poc.method["psi_norm"] == "image" and poc.method["label_smoothing"] == 0.1
    pnoc = load_config("configs/msrc/pnoc.yaml")
    assert pnoc.method["name"] == "pnoc" and pnoc.method["k_noc"] == 1 and pnoc.method["noc_objective"] == "paper" and pnoc.method["label_smoothing"] == 0.1
    assert load_config("configs/msrc/gslm.yaml").requires == {"seed": "configs/msrc/cam.yaml"}
    gslm_poc = load_config("configs/msrc/gslm_poc.yaml")
    assert gslm_poc.requires == {"seed": "configs/msrc/poc.yaml"} and gslm_poc.refine.confident is False
    assert gslm_poc.method["epochs_per_round"] == 5 and gslm_poc.output_dir == "runs/msrc/gslm_poc"
    assert load_config("configs/msrc/gslm_pnoc.yaml").requires == {"seed": "configs/msrc/pnoc.yaml"}
    gslm_occse = load_config("configs/msrc/gslm_occse.yaml")
    assert gslm_occse.requires == {"seed": "configs/msrc/occse.yaml"} and gslm_occse.method == gslm_poc.method
    # everything but the method, requires, output_dir (and GSLM's confident labels) equals the base
    for name in ("puzzle", "occse", "poc", "pnoc", "gslm", "gslm_poc", "gslm_pnoc", "gslm_occse"):
        d = load_config(f"configs/msrc/{name}.yaml").to_dict()
        base = cam.to_dict()
        for k in ("method", "requires", "output_dir", "source", "refine"):
            d.pop(k), base.pop(k)
        assert d == base, name
    voc_pnoc = load_config("configs/voc12/pnoc.yaml")
    assert voc_pnoc.requires == {"oc": "configs/voc12/cam.yaml"} and voc_pnoc.method["k_noc"] == 1
    assert (voc_pnoc.data.batch_size, voc_pnoc.optim.lr, voc_pnoc.trainer["max_epochs"]) == (32, 0.01, 15)
    assert voc_pnoc.data.color_jitter == {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.1}
    assert load_config("configs/voc12/gslm.yaml").requires == {}  # trains its GLM itself (round 0)


def test_dump_config_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    over = {"data.limit": 24, "inference.scales": [1.0, 0.5], "method.k_noc": 1, "overwrite": True}
    cfg = load_config("configs/msrc/pnoc.yaml", over)
    text = dump_config(cfg)
    assert text.startswith("# resolved by `wsss config` from configs/msrc/pnoc.yaml\n")
    assert "--data.limit 24" in text and "--overwrite" in text
    p = _w(tmp_path / "elsewhere/resolved.yaml", text)  # requires paths are absolute in the text
    again = load_config(p)
    a, b = cfg.to_dict(), again.to_dict()
    assert a.pop("source") != b.pop("source")
    assert a == b
