"""The CLI side of configs: `wsss config`, `--overwrite`, and one-line errors with exit code 2."""

from pathlib import Path

import pytest
from PIL import Image

from wsss import cli
from wsss.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
STAGE_FUNCS = {"pipeline": "run_pipeline", "train": "stage_train", "infer": "stage_infer",
               "evaluate": "stage_evaluate", "refine": "stage_refine", "report": "stage_report"}


@pytest.fixture
def seen(monkeypatch):
    """Replace every stage function by one recording the config it was given."""
    import wsss.pipeline as pipeline

    got: dict[str, object] = {}
    for cmd, fn in STAGE_FUNCS.items():
        monkeypatch.setattr(pipeline, fn, lambda cfg, _c=cmd: got.__setitem__(_c, cfg))
    monkeypatch.chdir(REPO)
    return got


def test_wsss_config_prints_resolved_yaml_that_round_trips(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = ["config", "--config", "configs/msrc/occse.yaml", "--data.limit", "24", "--trainer.max_epochs", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "crop_size: 320" in out and "name: occse" in out and "limit: 24" in out  # base merged, overrides applied
    assert "base:" not in out
    p = tmp_path / "resolved.yaml"
    p.write_text(out)
    want = load_config("configs/msrc/occse.yaml", {"data.limit": 24, "trainer.max_epochs": 1}).to_dict()
    got = load_config(p).to_dict()
    assert got.pop("source") == str(p) and want.pop("source") == "configs/msrc/occse.yaml"
    assert got == want
    assert got["requires"] == {"oc": "configs/msrc/cam.yaml"}


@pytest.mark.parametrize("command", list(STAGE_FUNCS))
def test_overwrite_flag_on_every_stage_command(command, seen):
    assert cli.main([command, "--config", "configs/msrc/cam.yaml", "--overwrite", "--data.limit", "3"]) == 0
    cfg = seen[command]
    assert cfg.overwrite is True and cfg.data.limit == 3
    assert cfg.overrides == {"data.limit": 3, "overwrite": True}
    assert cli.main([command, "--config", "configs/msrc/cam.yaml"]) == 0
    assert seen[command].overwrite is False and seen[command].overrides == {}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wsss: error: "), err
    return err


def test_unknown_method_name_is_one_line_exit_2(seen, capsys):
    assert cli.main(["train", "--config", "configs/msrc/cam.yaml", "--method.name", "nope"]) == 2
    err = _one_line_error(capsys)
    assert "configs/msrc/cam.yaml: method.name: unknown method 'nope'" in err
    assert "train" not in seen  # stopped before any stage ran


def test_wrong_type_is_one_line_exit_2(seen, capsys):
    assert cli.main(["pipeline", "--config", "configs/msrc/cam.yaml", "--data.batch_size", "eight"]) == 2
    assert _one_line_error(capsys) == "wsss: error: command line: data.batch_size must be an int, got 'eight'\n"
    assert cli.main(["config", "--config", "configs/msrc/nothere.yaml"]) == 2
    assert "configs/msrc/nothere.yaml: config file not found" in _one_line_error(capsys)


@pytest.mark.parametrize("exc", [
    ValueError("run/cams/x.npz: corrupt CAM file\nmore detail"),
    ValueError("method.k must be > 0"),
    FileNotFoundError("runs/x/model.safetensors: weights not found"),
    ImportError('pydensecrf2 is missing: pip install "wsss[crf]"'),
    Image.DecompressionBombError("Image size (1000000000 pixels) exceeds limit"),
    ConfigError("a.yaml: bad"),
])
def test_expected_failures_become_one_line(exc, seen, monkeypatch, capsys):
    import wsss.pipeline as pipeline

    def boom(cfg):
        raise exc

    monkeypatch.setattr(pipeline, "stage_infer", boom)
    assert cli.main(["infer", "--config", "configs/msrc/cam.yaml"]) == 2
    assert _one_line_error(capsys) == f"wsss: error: {str(exc).splitlines()[0]}\n"
    monkeypatch.setenv("WSSS_TRACEBACK", "1")
    with pytest.raises(type(exc)):
        cli.main(["infer", "--config", "configs/msrc/cam.yaml"])


def test_dataset_error_and_unexpected_errors(seen, monkeypatch, capsys):
    import wsss.pipeline as pipeline
    from wsss.data.voc import DatasetError

    def bad_data(cfg):
        raise DatasetError("data/x.jpg: not an image")

    monkeypatch.setattr(pipeline, "stage_report", bad_data)
    assert cli.main(["report", "--config", "configs/msrc/cam.yaml"]) == 2
    assert _one_line_error(capsys) == "wsss: error: data/x.jpg: not an image\n"

    def bug(cfg):
        raise KeyError("a bug, not an expected failure")

    monkeypatch.setattr(pipeline, "stage_report", bug)
    with pytest.raises(KeyError):  # programming errors keep their traceback
        cli.main(["report", "--config", "configs/msrc/cam.yaml"])
