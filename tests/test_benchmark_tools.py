"""The benchmark tooling every recorded number rests on: the 2-sigma rule (``benchmarks/seeds.py``),
per-run records that outlive their run directory (``benchmarks/collect.py``) and the training time
read back from a log (``benchmarks/scripts/records_from_table.py``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import collect  # noqa: E402
import seeds  # noqa: E402


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summarise_mean_and_sample_std_skip_missing_values():
    s = seeds.summarise([54.0, None, 56.0, 55.0])
    assert s["n"] == 3 and s["values"] == [54.0, 56.0, 55.0]
    assert s["mean"] == pytest.approx(55.0)
    assert s["std"] == pytest.approx(1.0)  # sample std (ddof 1) of 54, 55, 56
    assert seeds.summarise([53.0])["std"] is None
    assert seeds.summarise([None]) == {"n": 0, "mean": None, "std": None, "values": []}


@pytest.mark.parametrize("a, b, expected", [
    ([54.0, 55.0, 56.0], [50.0, 51.0, 52.0], "beats"),          # gap 4 > 2 x 1
    ([50.0, 51.0, 52.0], [54.0, 55.0, 56.0], "worse"),
    ([54.0, 55.0, 56.0], [52.0, 53.0, 54.0], "within noise"),   # gap 2 = 2 x 1: not beyond
    ([54.0, 57.0, 60.0], [50.0, 51.0, 52.0], "within noise"),   # gap 6 < 2 x 3 (the larger std)
    ([60.0], [50.0, 51.0, 52.0], "no verdict (n<2)"),
])
def test_two_sigma_rule(a, b, expected):
    assert seeds.verdict(seeds.summarise(a), seeds.summarise(b)) == expected


def _fake_run(root: Path) -> Path:
    run = root / "runs" / "msrc" / "occse@s1"
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "seeds.json").write_text(json.dumps({
        "split": "train", "num_images": 354, "miou": 56.57, "threshold": 0.46,
        "best": {"miou": 56.72, "threshold": 0.48}, "m_under": 0.26, "m_over": 0.76,
        "protocol": {"seed": 1, "method": {"name": "occse"}, "total_train_seconds": 1095.4}}))
    (run / "metrics" / "pseudo.json").write_text(json.dumps({"miou": 62.83}))
    return run


def test_a_run_record_outlives_its_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(collect, "REPO", tmp_path)
    run = _fake_run(tmp_path)
    rec = collect.recorded_run(run)
    assert rec["seed_miou_fixed"] == 56.57 and rec["pseudo_miou"] == 62.83 and rec["seed"] == 1
    assert rec["train_seconds"] == 1095.4 and "from_record" not in rec
    saved = tmp_path / "records" / "occse@s1.json"
    assert json.loads(saved.read_text())["seed_miou_swept"] == 56.72
    shutil.rmtree(run)  # the machine loses runs/
    again = collect.recorded_run(run)
    assert again["from_record"] is True
    assert {k: again[k] for k in ("seed_miou_fixed", "pseudo_miou")} == {"seed_miou_fixed": 56.57, "pseudo_miou": 62.83}
    assert collect.recorded_run(tmp_path / "runs" / "msrc" / "never_made") is None


def test_train_seconds_from_a_log_sum_the_last_time_of_each_epoch():
    mod = _load_script("records_from_table")
    log = ("Epoch 0:  50%|#   | 22/44 [00:40<00:40, 0.5it/s]\r"
           "Epoch 0: 100%|####| 44/44 [01:20<00:00, 0.5it/s]\r"
           "Epoch 0: 100%|####| 44/44 [01:22<00:00, 0.5it/s, loss=1]\n"
           "Epoch 1: 100%|####| 44/44 [1:02:03<00:00, 0.5it/s]\n")
    assert mod.train_seconds_from_log(log) == 82 + 3723
    assert mod.train_seconds_from_log("no progress bars here") is None
