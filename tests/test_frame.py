"""Stages as the frame: run fingerprints (reuse / stop / overwrite / resume) and dependencies.

Real MSRC photographs, tiny settings (4 images, crops of 64 px, one TTA scale, no flip).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wsss.cli import main
from wsss.config import ConfigError, load_config
from wsss.fingerprint import Fingerprint, describe_change, stage_fingerprint, stage_keys, write_fingerprint
from wsss.io import read_json, write_json
from wsss.methods import METHODS, register
from wsss.methods.base import WSSSModule
from wsss.pipeline import resolve_requires, run_pipeline
from wsss.stages import _open_stage, requires_inputs, stage_evaluate, stage_train

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "configs/msrc/cam.yaml"
TINY = {"data.limit": 4, "trainer.max_epochs": 1, "data.crop_size": 64, "data.resize_long": [64, 96],
        "data.batch_size": 2, "data.num_workers": 0, "inference.scales": [1.0], "inference.flip": False,
        "refine.workers": 1, "refine.confident": False, "report.num_samples": 2, "trainer.accelerator": "cpu"}


def _args(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return out


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(msrc_root) -> dict:
    return {**TINY, "data.root": str(msrc_root)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny):
    """One finished CAM run made through the CLI."""
    out = tmp_path_factory.mktemp("frame") / "cam"
    assert main(["pipeline", "--config", str(CFG), "--output_dir", str(out), *_args(tiny)]) == 0
    return out


# ---------------------------------------------------------------------------------------
# fingerprint keys and messages (no training)
# ---------------------------------------------------------------------------------------


def test_stage_keys_are_cumulative_and_leave_out_how_a_run_executes():
    cfg = load_config(CFG)
    train, infer, evaluate, refine, report = (stage_keys(cfg, s) for s in ("train", "infer", "evaluate", "refine", "report"))
    assert train["optim.lr"] == 0.1 and train["seed"] == 0 and train["method.name"] == "cam"
    assert train["trainer.max_epochs"] == 8 and train["trainer.precision"] == "32-true"
    assert train["data.root"] == str((Path.cwd() / cfg.data.root).resolve())  # keyed as an absolute path
    for k in ("data.eval_split", "data.num_workers", "data.check_files", "trainer.accelerator", "trainer.devices",
              "trainer.strategy", "output_dir", "source", "inference.scales"):
        assert k not in train, k
    assert set(train) < set(infer) < set(evaluate) < set(refine) < set(report)
    assert infer["inference.scales"] == [1.0, 0.5, 1.5, 2.0] and "inference.channels_last" not in infer
    assert "model.channels_last" not in train and "model.bn_mode" in train
    assert evaluate["data.eval_split"] == "train" and evaluate["evaluation.threshold_from"] == "val"
    assert "refine.workers" not in refine and refine["refine.fg_threshold"] == 0.30
    assert report["report.num_samples"] == 8 and not any(k.startswith(("output_dir", "source")) for k in report)


def test_fingerprint_hash_depends_on_values_not_on_int_or_float_spelling():
    a = load_config(CFG)
    b = load_config(CFG, {"optim.lr": 0.01})
    c = load_config(CFG, {"data.num_workers": 0, "trainer.devices": 2, "data.check_files": False})  # unkeyed keys
    fa, fb, fc = (stage_fingerprint(x, "train") for x in (a, b, c))
    assert fa.hash != fb.hash and fa.hash == fc.hash and len(fa.hash) == 64
    assert Fingerprint("train", {**fa.keys, "seed": 0.0, "optim.lr": 0.1}).hash == fa.hash  # 0 == 0.0
    assert stage_fingerprint(a, "train", inputs={"init_weights": "sha256:00"}).hash != fa.hash
    assert stage_fingerprint(a, "infer", previous=fa.hash).hash != stage_fingerprint(a, "infer", previous=None).hash
    assert Fingerprint("train", fa.keys, version="9.9").hash != fa.hash  # the wsss version is part of it


def test_mismatch_message_names_the_changed_keys():
    a, b = load_config(CFG), load_config(CFG, {"optim.lr": 0.01})
    rec = stage_fingerprint(a, "train").to_dict()
    assert describe_change(rec, stage_fingerprint(b, "train")) == "were made with optim.lr=0.1, the config says 0.01"
    c = load_config(CFG, {"optim.lr": 0.01, "seed": 3, "model.backbone": "resnet50"})
    msg = describe_change(rec, stage_fingerprint(c, "train"))
    assert msg == ("were made with model.backbone=efficientnet_lite0 and optim.lr=0.1 and seed=0, "
                   "the config says model.backbone=resnet50 and optim.lr=0.01 and seed=3")
    d = Fingerprint("train", {**rec["keys"], "method.alpha": 2})  # a key that did not exist before
    assert describe_change(rec, d) == "were made with method.alpha=<unset>, the config says 2"


def test_random_walk_crf_is_keyed_by_its_own_stage_and_moved_keys_still_match(tmp_path):
    """random_walk.crf belongs to the rw_crf stage (changing it re-runs only the CRF after the walk):
    rw's keys leave it out, rw_crf's and segment's hold it; an rw fingerprint recorded before the
    move (holding the key) still matches the current rw fingerprint, but a *current* key that is
    absent from a record still differs."""
    from wsss.fingerprint import MOVED_KEYS, changed_keys, matches

    assert MOVED_KEYS == {"random_walk.crf": "rw_crf"}
    cfg = load_config(CFG, {"output_dir": str(tmp_path / "run"), "random_walk.crf": {"iterations": 1}})
    rw, rw_crf, seg = (stage_keys(cfg, s) for s in ("rw", "rw_crf", "segment"))
    assert not any(k.startswith("random_walk.crf") for k in rw)
    assert rw_crf["random_walk.crf.iterations"] == 1 and seg["random_walk.crf.iterations"] == 1
    assert set(rw_crf) - set(rw) == {"random_walk.crf.iterations"}
    cur = stage_fingerprint(cfg, "rw")
    old = cur.to_dict()
    old["keys"] = {**old["keys"], "random_walk.crf.iterations": 1}  # recorded by the rw stage of an older wsss
    old["hash"] = Fingerprint("rw", old["keys"]).hash
    assert changed_keys(old, cur) == [] and matches(old, cur)
    newer = stage_fingerprint(cfg, "rw_crf")
    older = {**newer.to_dict(), "keys": {k: v for k, v in newer.keys.items() if not k.startswith("random_walk.crf")}}
    assert [k for k, *_ in changed_keys(older, newer)] == ["random_walk.crf.iterations"]
    # back to no CRF (null, also the key's legacy default) after a CRF was recorded: a change, not
    # a legacy or moved key (the stage keys the family, and the record holds it as a mapping)
    none = stage_fingerprint(load_config(CFG, {"output_dir": str(tmp_path / "run")}), "rw_crf")
    assert none.keys["random_walk.crf"] is None
    assert {k for k, *_ in changed_keys(newer.to_dict(), none)} == {"random_walk.crf", "random_walk.crf.iterations"}


def test_keys_added_later_match_only_at_their_legacy_value(tmp_path):
    """A run recorded before affinity.label_source / label_band existed (keys absent from its
    fingerprint) is reused when the config holds the value those runs implicitly had, and stops
    with the one-line mismatch for any other value; an absent key not in LEGACY_DEFAULTS always
    differs."""
    from wsss.fingerprint import LEGACY_DEFAULTS, changed_keys, matches

    assert LEGACY_DEFAULTS["affinity.label_source"] == "confident" and LEGACY_DEFAULTS["affinity.label_band"] == 0
    assert "random_walk.crf" in LEGACY_DEFAULTS and LEGACY_DEFAULTS["random_walk.crf"] is None
    cfg = load_config(CFG, {"output_dir": str(tmp_path / "run")})
    cur = stage_fingerprint(cfg, "report")
    old = cur.to_dict()
    old["keys"] = {k: v for k, v in old["keys"].items() if k not in LEGACY_DEFAULTS}  # a pre-72a75e2 run
    old["hash"] = Fingerprint("report", old["keys"]).hash
    assert old["hash"] != cur.hash
    assert changed_keys(old, cur) == [] and matches(old, cur)
    pseudo = stage_fingerprint(load_config(CFG, {"affinity.label_source": "pseudo"}), "report")
    assert [k for k, *_ in changed_keys(old, pseudo)] == ["affinity.label_source"] and not matches(old, pseudo)
    assert not matches({**old, "previous": "0" * 64}, cur)  # the chain must agree too
    assert not matches(None, cur)
    # a recorded run holding the key is compared as usual, and unknown absent keys still differ
    assert matches(cur.to_dict(), cur)
    d = Fingerprint("report", {**old["keys"], "method.alpha": 2})
    assert [k for k, *_ in changed_keys(old, d)] == ["method.alpha"]
    # the stage decision: outputs of the old run are reused, not reported as a mismatch
    run = Path(cfg.output_dir)
    (run / "report").mkdir(parents=True)
    (run / "report/index.html").write_text("old")
    write_json(run / "fingerprints/report.json", {**old, "status": "done"})
    skip, _ = _open_stage(cfg, "report", upstream=False, required=[run / "report/index.html"])
    assert skip
    with pytest.raises(ConfigError, match=r"affinity.label_source=<unset>, the config says pseudo"):
        _open_stage(load_config(CFG, {"output_dir": str(run), "affinity.label_source": "pseudo"}), "report",
                    upstream=False)


def _fake_run(tmp_path: Path, overrides: dict | None = None):
    cfg = load_config(CFG, {"output_dir": str(tmp_path / "run"), **(overrides or {})})
    return cfg, Path(cfg.output_dir)


def test_started_fingerprint_resumes_and_a_different_one_stops(tmp_path, capsys):
    cfg, run = _fake_run(tmp_path)
    skip, fp = _open_stage(cfg, "train")  # nothing there: fresh, 'started' recorded before any work
    assert not skip and (run / "fingerprints/train.started.json").is_file()
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints/last.ckpt").write_bytes(b"x")  # killed mid-training
    skip, fp2 = _open_stage(cfg, "train")
    assert not skip and fp2.hash == fp.hash and "resuming" in capsys.readouterr().out
    other = load_config(CFG, {"output_dir": str(run), "optim.lr": 0.01})
    with pytest.raises(ConfigError) as exc:
        _open_stage(other, "train")
    assert str(exc.value) == (f"{run}: outputs of stage 'train' were made with optim.lr=0.1, the config says 0.01; "
                              "re-run with --overwrite or choose another --output_dir")
    assert (run / "checkpoints/last.ckpt").is_file()  # nothing deleted without overwrite
    other.overwrite = True
    skip, _ = _open_stage(other, "train")
    assert not skip and not (run / "checkpoints").exists()
    assert read_json(run / "fingerprints/train.started.json")["keys"]["optim.lr"] == 0.01


def test_outputs_without_fingerprint_are_a_mismatch(tmp_path):
    cfg, run = _fake_run(tmp_path)
    (run / "cams").mkdir(parents=True)
    (run / "cams/x.npz").write_bytes(b"old")
    with pytest.raises(ConfigError, match=r"outputs of stage 'infer' have no fingerprint .*--overwrite"):
        _open_stage(cfg, "infer")
    # a fingerprint that differs while the stage has no outputs is recomputed without asking
    cfg2, run2 = _fake_run(tmp_path / "b")
    _open_stage(cfg2, "refine")
    skip, _ = _open_stage(load_config(CFG, {"output_dir": str(run2), "refine.enabled": False}), "refine")
    assert not skip


def test_overwrite_deletes_this_and_every_later_stage(tmp_path):
    cfg, run = _fake_run(tmp_path)
    for name, files in {"train": ["model.safetensors", "model.json"], "infer": ["cams/a.npz"],
                        "evaluate": ["metrics/seeds.json", "metrics/val_seeds.json"],
                        "refine": ["pseudo/a.png", "metrics/pseudo.json"], "report": ["report/index.html"]}.items():
        skip, fp = _open_stage(cfg, name)  # fresh stage: 'started' written
        for f in files:
            (run / f).parent.mkdir(parents=True, exist_ok=True)
            (run / f).write_text("x")
        write_fingerprint(run, fp)  # the stage finished
    (run / "metrics/timing.json").write_text("{}")
    new = load_config(CFG, {"output_dir": str(run), "inference.scales": [1.0]})
    assert _open_stage(new, "train")[0]  # train keys unchanged: reused
    new.overwrite = True
    assert not _open_stage(new, "infer")[0]
    assert (run / "model.safetensors").is_file() and (run / "fingerprints/train.json").is_file()
    for gone in ("cams", "metrics/seeds.json", "metrics/val_seeds.json", "pseudo", "metrics/pseudo.json", "report",
                 "fingerprints/evaluate.json", "fingerprints/refine.json", "fingerprints/report.json"):
        assert not (run / gone).exists(), gone
    assert (run / "metrics/timing.json").is_file()


# ---------------------------------------------------------------------------------------
# on a real (tiny) run
# ---------------------------------------------------------------------------------------


def test_same_config_rerun_reuses_every_stage(run_dir, tiny, capsys):
    for stage in ("train", "infer", "evaluate", "refine", "report"):
        assert (run_dir / "fingerprints" / f"{stage}.json").is_file(), stage
        assert not (run_dir / "fingerprints" / f"{stage}.started.json").exists()
    meta = read_json(run_dir / "model.json")
    assert meta["fingerprint"] == read_json(run_dir / "fingerprints/train.json")["hash"]
    seeds = read_json(run_dir / "metrics/seeds.json")
    assert seeds["protocol"]["fingerprints"]["train"] == meta["fingerprint"]
    before = _mtimes(run_dir)
    capsys.readouterr()
    assert main(["pipeline", "--config", str(CFG), "--output_dir", str(run_dir), *_args(tiny)]) == 0
    out = capsys.readouterr().out
    assert "skipping training" in out and "reusing" in out
    after = _mtimes(run_dir)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed <= {"config.json"}, changed  # nothing was recomputed


def test_changed_lr_stops_with_one_line_then_overwrite_retrains(run_dir, tiny, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    capsys.readouterr()
    rc = main(["pipeline", "--config", str(CFG), "--output_dir", str(run), *_args(tiny), "--optim.lr", "0.01"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"wsss: error: {run}: outputs of stage 'train' were made with optim.lr=0.1, the config "
                               "says 0.01; re-run with --overwrite or choose another --output_dir")
    old_meta = read_json(run / "model.json")
    w_old = load_file(str(run / "model.safetensors"))["classifier.weight"]
    # a single later stage notices it too (it would otherwise evaluate the old CAMs)
    cfg = load_config(CFG, {**tiny, "output_dir": str(run), "optim.lr": 0.01})
    with pytest.raises(ConfigError, match=r"outputs of stage 'train' were made with optim.lr=0.1, the config says 0.01"):
        stage_evaluate(cfg)
    cfg.overwrite = True
    stage_train(cfg)
    meta = read_json(run / "model.json")
    assert meta["fingerprint"] != old_meta["fingerprint"]
    assert read_json(run / "fingerprints/train.json")["keys"]["optim.lr"] == 0.01
    assert not torch.equal(load_file(str(run / "model.safetensors"))["classifier.weight"], w_old)  # retrained
    assert meta["resumed"] is False  # not resumed from the old lr's checkpoint
    for gone in ("cams", "metrics/seeds.json", "pseudo", "report", "fingerprints/infer.json"):
        assert not (run / gone).exists(), gone


# ---------------------------------------------------------------------------------------
# dependencies (requires)
# ---------------------------------------------------------------------------------------


class NeedsCAM(WSSSModule):
    """A fake method that starts from another run's CAM weights (``method.cam_weights``)."""

    requires_map = {"cam": ("cam_weights", "model.safetensors")}

    def __init__(self, cfg, num_classes):
        super().__init__(cfg, num_classes)
        path = cfg.method.get("cam_weights")
        if not path:
            raise ConfigError("needs_cam: method.cam_weights not set")
        self.net.load_state_dict(load_file(path), strict=True)


@pytest.fixture
def needs_cam():
    register("needs_cam", f"{__name__}:NeedsCAM")
    yield
    METHODS.pop("needs_cam", None)


def test_requires_reuses_a_matching_run_and_feeds_the_method(run_dir, tiny, tmp_path, needs_cam):
    dep_yaml = tmp_path / "dep.yaml"  # the CAM config whose output_dir is the finished run
    dep_yaml.write_text(CFG.read_text().replace("output_dir: runs/msrc/cam", f"output_dir: {run_dir}"))
    before = _mtimes(run_dir)
    cfg = load_config(CFG, {**tiny, "method": {"name": "needs_cam"}, "output_dir": str(tmp_path / "parent")})
    cfg.requires = {"cam": str(dep_yaml)}
    cfg.overrides = dict(tiny)  # the command line had no --output_dir: the dependency keeps its own
    res = run_pipeline(cfg)
    assert cfg.method["cam_weights"] == str(run_dir / "model.safetensors")
    after = _mtimes(run_dir)
    assert {k for k in after if after[k] != before.get(k)} <= {"config.json"}  # reused, nothing recomputed
    rec = read_json(tmp_path / "parent/fingerprints/requires.json")["cam"]
    assert rec["run_dir"] == str(run_dir) and rec["fingerprint"] == read_json(run_dir / "fingerprints/train.json")["hash"]
    assert res["seeds"]["protocol"]["requires"]["cam"]["fingerprint"] == rec["fingerprint"]
    assert read_json(tmp_path / "parent/fingerprints/train.json")["inputs"]["requires.cam"] == rec["fingerprint"]
    # a single stage (wsss train) points at the dependency without running it: same fingerprint, reused
    single = load_config(CFG, {**tiny, "method": {"name": "needs_cam"}, "output_dir": str(tmp_path / "parent")})
    single.requires, single.overrides = {"cam": str(dep_yaml)}, dict(tiny)
    resolve_requires(single, run=False)
    assert single.method["cam_weights"] == str(run_dir / "model.safetensors")
    assert requires_inputs(single) == {"requires.cam": rec["fingerprint"]}
    before = _mtimes(tmp_path / "parent")
    stage_train(single)
    assert _mtimes(tmp_path / "parent") == before
    # a dependency pointing back at an ancestor is a cycle
    cyc = load_config(CFG, {**tiny, "method": {"name": "needs_cam"}, "output_dir": str(tmp_path / "p2")})
    cyc.requires = {"cam": str(dep_yaml)}
    with pytest.raises(ConfigError, match="dependency cycle"):
        resolve_requires(cyc, _stack=(str(dep_yaml.resolve()),))
    # a dependency the method does not take
    bad = load_config(CFG, {**tiny, "output_dir": str(tmp_path / "p3")})
    bad.requires = {"cam": str(dep_yaml)}
    with pytest.raises(ConfigError, match=r"requires \['cam'\] not used by method 'cam'"):
        resolve_requires(bad)


def test_requires_runs_the_dependency_under_an_overridden_output_dir(tiny, tmp_path, needs_cam):
    parent = tmp_path / "parent"
    over = {**tiny, "data.limit": 2, "data.batch_size": 2, "evaluation.threshold_from": None, "refine.enabled": False,
            "output_dir": str(parent)}
    parent_yaml = tmp_path / "parent.yaml"  # a config file of its own (cam.yaml requiring cam.yaml is a cycle)
    parent_yaml.write_text(CFG.read_text())
    cfg = load_config(parent_yaml, {**over, "method": {"name": "needs_cam"}})
    cfg.requires = {"cam": str(CFG)}
    cfg.overrides = over  # --output_dir on the command line: the dependency goes below it
    resolve_requires(cfg)
    dep = parent / "requires" / "cam"
    assert cfg.method["cam_weights"] == str(dep / "model.safetensors") and (dep / "model.safetensors").is_file()
    dep_keys = read_json(dep / "fingerprints/train.json")["keys"]
    assert dep_keys["data.limit"] == 2 and dep_keys["method.name"] == "cam"  # parent's overrides, not its method
    assert read_json(dep / "fingerprints/report.json")["keys"]["refine.enabled"] is False


# ---------------------------------------------------------------------------------------
# training inputs and the model/dataset class check
# ---------------------------------------------------------------------------------------


def test_init_weights_are_loaded_before_the_first_step_and_fingerprinted(run_dir, tiny, tmp_path):
    from wsss.fingerprint import file_digest

    init = run_dir / "model.safetensors"
    cfg = load_config(CFG, {**tiny, "output_dir": str(tmp_path / "run"), "optim.lr": 0.0})  # lr 0: weights stay put
    stage_train(cfg, init_weights=init)
    got, want = load_file(str(tmp_path / "run/model.safetensors")), load_file(str(init))
    params = [k for k in want if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert got.keys() == want.keys() and "classifier.weight" in params
    # BN running statistics are left out: they move during training even with model.freeze_bn (the
    # backbone BN layers stay in training mode, Lightning 2.6 never calls .train() on the module)
    assert all(torch.equal(got[k], want[k]) for k in params)
    assert read_json(tmp_path / "run/fingerprints/train.json")["inputs"]["init_weights"] == f"sha256:{file_digest(init)}"
    assert read_json(tmp_path / "run/model.json")["init_weights"] == str(init)


class NeedsConfidence(WSSSModule):
    extra_inputs = ("confidence",)


def test_a_method_whose_extra_input_is_missing_cannot_train(tiny, tmp_path):
    from wsss.training import train

    register("needs_conf", f"{__name__}:NeedsConfidence")
    try:
        cfg = load_config(CFG, {**tiny, "method": {"name": "needs_conf"}, "output_dir": str(tmp_path / "r")})
        with pytest.raises(ValueError, match=r"method 'needs_conf' \(NeedsConfidence\) needs extra training input\(s\) \['confidence'\]"):
            train(cfg)
    finally:
        METHODS.pop("needs_conf", None)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_model_classes_that_differ_from_the_dataset_stop_with_one_line(run_dir, tiny, tmp_path, msrc_root):
    from wsss.data.voc import DatasetError, VOCLayout
    from wsss.training import load_generator

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "model.safetensors", run)
    meta = read_json(run_dir / "model.json")
    names = list(meta["class_names"])
    names[1], names[2] = names[2], names[1]
    write_json(run / "model.json", {**meta, "class_names": names})
    cfg = load_config(CFG, {**tiny, "output_dir": str(run)})
    layout = VOCLayout(msrc_root, "train", limit=2, check_files=False)
    with pytest.raises(DatasetError) as exc:
        load_generator(cfg, layout=layout)
    assert str(exc.value) == (f"{run / 'model.json'}: model classes {names} differ from dataset {msrc_root} "
                              f"classes {layout.class_names}")
    write_json(run / "model.json", meta)
    assert load_generator(cfg, layout=layout).classifier.weight.shape[0] == 16


# ---------------------------------------------------------------------------------------
# a method that makes its own extra inputs (extra_sources hook; CPN's superpixels)
# ---------------------------------------------------------------------------------------


class _ConstantSource:
    """An extra input: a constant map per image (records which ids were asked for)."""

    name = "const"
    pad_value = 255

    def __init__(self, layout, value: int) -> None:
        self.layout, self.value = layout, value

    def load(self, image_id: str):
        import numpy as np

        h, w = self.layout.image(image_id).shape[:2]
        return np.full((h, w), self.value, dtype=np.int32)

    def fingerprint(self) -> str:
        return f"const:{self.value}"


class SelfExtras(WSSSModule):
    """CAM baseline that also demands ``batch['const']`` and makes it itself."""

    extra_inputs = ("const",)
    seen: list = []

    @classmethod
    def extra_sources(cls, cfg, layout, run_dir):
        return {"const": _ConstantSource(layout, 7)}

    def compute_loss(self, batch):
        SelfExtras.seen.append(sorted(set(batch["const"].unique().tolist())))
        return super().compute_loss(batch)


def test_method_made_extras_reach_the_batch_and_the_fingerprint(tiny, tmp_path):
    register("self_extras", f"{__name__}:SelfExtras")
    try:
        SelfExtras.seen.clear()
        cfg = load_config(CFG, {**tiny, "method": {"name": "self_extras"}, "output_dir": str(tmp_path / "run")})
        stage_train(cfg)
        # every batch carried the map through the joint augmentation (crop padding = 255)
        assert SelfExtras.seen and all(set(v) <= {7, 255} and 7 in v for v in SelfExtras.seen)
        fp = read_json(tmp_path / "run" / "fingerprints" / "train.json")
        assert "const:7" in json.dumps(fp)
    finally:
        METHODS.pop("self_extras", None)


def test_channels_last_callback_converts_module_and_image_batch():
    from wsss.training import ChannelsLast

    net = torch.nn.Conv2d(3, 4, 3)
    batch = {"image": torch.randn(2, 3, 8, 8), "label": torch.ones(2, 5), "mask": torch.zeros(2, 8, 8, dtype=torch.long)}
    cb = ChannelsLast()
    cb.on_fit_start(None, net)
    cb.on_train_batch_start(None, net, batch, 0)
    assert net.weight.is_contiguous(memory_format=torch.channels_last) and not net.weight.is_contiguous()
    assert batch["image"].is_contiguous(memory_format=torch.channels_last) and not batch["image"].is_contiguous()
    assert batch["mask"].is_contiguous() and batch["label"].is_contiguous()  # only float 4-D tensors change
    ref = torch.nn.functional.conv2d(batch["image"].contiguous(), net.weight.contiguous(), net.bias)
    assert torch.allclose(net(batch["image"]), ref, atol=1e-5)  # same math up to rounding


def test_dependencies_get_the_parents_overrides_except_its_own_and_the_stages_after_refine(tmp_path):
    """A dependency run (requires) is made with the parent's command-line overrides, so that it is
    the same recipe, but never with the parent's identity or its post-refine sections: the parent
    uses the dependency's weights, CAMs or pseudo masks, not its walk or segmentation network."""
    from wsss.pipeline import _dependency_overrides

    over = {"optim.lr": 0.01, "data.root": "/x", "seed": 2, "output_dir": str(tmp_path), "method.alpha": 0.3,
            "requires.seed": "cam.yaml", "overwrite": True, "affinity.enabled": True, "random_walk.crf": {},
            "segmentation.enabled": True}
    cfg = load_config(CFG, {k: v for k, v in over.items() if not k.startswith("requires")})
    cfg.overrides = over
    assert _dependency_overrides(cfg) == {"optim.lr": 0.01, "data.root": "/x", "seed": 2}


def test_a_run_copied_with_its_dependency_is_reused_where_it_lands(tiny, tmp_path, needs_cam, capsys):
    """Fingerprints key the absolute path a dependency gives the method (method.cam_weights =
    <run>/requires/cam/model.safetensors); a copy of the whole run elsewhere matches all the same
    (the path is at the same place relative to the run: fingerprint ``run_dir``), while pointing
    the method at a file elsewhere still differs."""
    import shutil

    from wsss.fingerprint import Fingerprint, changed_keys
    from wsss.pipeline import run_pipeline

    def parent_cfg(out: Path):
        over = {**tiny, "data.limit": 2, "data.batch_size": 2, "evaluation.threshold_from": None,
                "refine.enabled": False, "output_dir": str(out)}
        parent_yaml = tmp_path / "parent.yaml"
        parent_yaml.write_text(CFG.read_text())
        cfg = load_config(parent_yaml, {**over, "method": {"name": "needs_cam"}})
        cfg.requires = {"cam": str(CFG)}
        cfg.overrides = over
        return cfg

    first = tmp_path / "first"
    run_pipeline(parent_cfg(first))
    assert read_json(first / "fingerprints/train.json")["run_dir"] == str(first)
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(first, moved)
    inodes = {p: (moved / p).stat().st_ino for p in ("model.safetensors", "requires/cam/model.safetensors")}
    capsys.readouterr()
    run_pipeline(parent_cfg(moved))  # would stop with "method.cam_weights=<first>/..., the config says <moved>/..."
    assert {p: (moved / p).stat().st_ino for p in inodes} == inodes  # nothing retrained
    assert "skipping training" in capsys.readouterr().out
    rec = read_json(moved / "fingerprints/train.json")
    elsewhere = Fingerprint("train", {**rec["keys"], "method.cam_weights": str(tmp_path / "other/model.safetensors")},
                            run_dir=str(moved))
    assert [k for k, *_ in changed_keys(rec, elsewhere, include_inputs=False)] == ["method.cam_weights"]
