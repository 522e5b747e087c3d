"""P-NOC family: hand-computed losses, exact puzzle round trip, erasure masks (image vs batch
psi), ramps, smoothing, the P-NOC alternation (which network moves in which phase), training
losses that are the model.py functions, both noc objectives against autograd on tiny nets,
short Lightning trainings and a weights_only resume through the shared trainer on a few real
MSRC images."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from wsss.config import ConfigError, load_config
from wsss.methods import get_method
from wsss.methods.base import build_cam_net
from wsss.methods.pnoc.model import (
    PNOCParams,
    POCParams,
    class_maps,
    cse_loss,
    erasure_map,
    hard_erase,
    linear_ramp,
    merge,
    noc_loss,
    noc_objective,
    occse_loss,
    poc_loss,
    psi,
    puzzle_loss,
    reconstruction_loss,
    remove_class,
    sample_present_class,
    smooth_labels,
    soft_erase,
    tile,
)
import wsss.methods.pnoc.module as pnoc_module
from wsss.methods.pnoc.module import OCCSEModule, PNOCModule, PuzzleModule

LN2, LN3 = math.log(2.0), math.log(3.0)
NUM_CLASSES = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on 2 shared cores, 2 threads under contention are ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------
# Puzzle tiling
# ---------------------------------------------------------------------------------------
def test_tile_order_and_exact_round_trip():
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).view(2, 1, 4, 6)
    t = tile(x, 2)
    assert t.shape == (8, 1, 2, 3)
    # tile-major: tile 0 (top-left) of image 0, of image 1, then tile 1 (top-right) ...
    assert torch.equal(t[0, 0], torch.tensor([[0.0, 1, 2], [6, 7, 8]]))
    assert torch.equal(t[1, 0], torch.tensor([[24.0, 25, 26], [30, 31, 32]]))
    assert torch.equal(t[2, 0], torch.tensor([[3.0, 4, 5], [9, 10, 11]]))
    assert torch.equal(t[4, 0], torch.tensor([[12.0, 13, 14], [18, 19, 20]]))  # bottom-left of image 0
    assert torch.equal(t[7, 0], x[1, 0, 2:, 3:])  # bottom-right of image 1
    assert torch.equal(merge(t, 2, 2), x)
    y = torch.randn(3, 5, 8, 12)
    assert torch.equal(merge(tile(y, 2), 3, 2), y)
    assert torch.equal(merge(tile(y, 4), 3, 4), y)


def test_tile_merge_reject_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        tile(torch.zeros(1, 3, 5, 4))
    with pytest.raises(ValueError, match="tiles"):
        merge(torch.zeros(6, 3, 2, 2), 2, 2)


# ---------------------------------------------------------------------------------------
# psi, erasure, class sampling
# ---------------------------------------------------------------------------------------
def test_psi_per_image_and_batch_max():
    a = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]], [[8.0, -3.0], [2.0, 1.0]]])
    img = psi(a, "image", eps=0.0)
    assert torch.allclose(img[0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    assert torch.allclose(img[1], torch.tensor([[1.0, 0.0], [0.25, 0.125]]))
    bat = psi(a, "batch", eps=0.0)  # one max (8) for the whole batch
    assert torch.allclose(bat[0], torch.tensor([[0.0, 0.25], [0.5, 0.0]]))
    assert torch.allclose(bat[1], torch.tensor([[1.0, 0.0], [0.25, 0.125]]))
    # eps as in the authors' code; an all-negative map stays 0 instead of dividing by 0
    assert torch.allclose(psi(a, "image")[0, 1, 0], torch.tensor(4.0 / (4.0 + 1e-5)))
    assert torch.equal(psi(-torch.ones(1, 2, 2), "image"), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="psi_norm"):
        psi(a, "channel")


def test_class_maps_and_erasure_map():
    cams = torch.zeros(2, 3, 2, 2)
    cams[0, 1] = torch.tensor([[1.0, -2.0], [4.0, 2.0]])
    cams[1, 2] = torch.tensor([[3.0, 0.0], [0.0, 6.0]])
    r = torch.tensor([1, 2])
    assert torch.equal(class_maps(cams, r)[0], cams[0, 1])
    m = erasure_map(cams, r, (2, 2), "image", eps=0.0)  # same size: no resampling
    assert torch.allclose(m[0], torch.tensor([[0.25, 0.0], [1.0, 0.5]]))
    assert torch.allclose(m[1], torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    up = erasure_map(cams, r, (4, 4), "image")
    assert up.shape == (2, 4, 4) and float(up.max()) <= 1.0 and float(up.min()) >= 0.0


def test_soft_and_hard_erasure_masks():
    images = torch.ones(1, 3, 2, 2) * 2.0
    mask = torch.tensor([[[0.0, 0.5], [1.0, 0.2]]])
    soft = soft_erase(images, mask)
    for c in range(3):
        assert torch.allclose(soft[0, c], torch.tensor([[2.0, 1.0], [0.0, 1.6]]))
    hard = hard_erase(images, torch.tensor([[[0.1, 0.2], [0.3, 1.0]]]), 0.2)
    for c in range(3):  # psi <= 0.2 kept, > 0.2 erased to 0 (the mean colour)
        assert torch.equal(hard[0, c], torch.tensor([[2.0, 2.0], [0.0, 0.0]]))
    # the soft erasure is differentiable w.r.t. the mask, d/dm of sum(x (1 - m)) = -x
    m = mask.clone().requires_grad_(True)
    soft_erase(images, m).sum().backward()
    assert torch.allclose(m.grad, torch.full((1, 2, 2), -6.0))


def test_sample_present_class_uniform_and_skips_empty():
    labels = torch.tensor([[0.0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_present_class(labels, g) for _ in range(2000)])
    assert set(draws[:, 0].tolist()) == {1, 3}
    assert (draws[:, 1] == -1).all()  # image without any foreground class
    assert (draws[:, 2] == 0).all()
    frac = float((draws[:, 0] == 1).float().mean())
    assert abs(frac - 0.5) < 0.05  # binomial sd ~ 0.011
    a = sample_present_class(labels, torch.Generator().manual_seed(7))
    b = sample_present_class(labels, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_remove_class():
    y = torch.tensor([[1.0, 1, 0], [0, 0, 0], [0, 1, 1]])
    out = remove_class(y, torch.tensor([0, -1, 2]))
    assert torch.equal(out, torch.tensor([[0.0, 1, 0], [0, 0, 0], [0, 1, 0]]))
    assert torch.equal(y[0], torch.tensor([1.0, 1, 0]))  # input untouched


# ---------------------------------------------------------------------------------------
# ramps, smoothing
# ---------------------------------------------------------------------------------------
def test_linear_ramps_of_the_paper():
    # lambda_re: 0 -> 4 over the first half
    assert linear_ramp(0.0, 0.0, 0.5, 0.0, 4.0) == 0.0
    assert linear_ramp(0.25, 0.0, 0.5, 0.0, 4.0) == pytest.approx(2.0)
    assert linear_ramp(0.5, 0.0, 0.5, 0.0, 4.0) == pytest.approx(4.0)
    assert linear_ramp(0.9, 0.0, 0.5, 0.0, 4.0) == pytest.approx(4.0)
    # lambda_cse: 0.3 -> 1 throughout training
    assert linear_ramp(0.0, 0.0, 1.0, 0.3, 1.0) == pytest.approx(0.3)
    assert linear_ramp(0.5, 0.0, 1.0, 0.3, 1.0) == pytest.approx(0.65)
    assert linear_ramp(1.0, 0.0, 1.0, 0.3, 1.0) == pytest.approx(1.0)
    # lambda_noc: 0 -> 1; a zero-length ramp is the constant end value (authors' rate 0)
    assert linear_ramp(0.1, 0.0, 1.0, 0.0, 1.0) == pytest.approx(0.1)
    assert linear_ramp(0.0, 0.0, 0.0, 0.0, 1.0) == 1.0
    assert linear_ramp(0.3, 0.2, 0.6, 1.0, 3.0) == pytest.approx(1.5)  # delayed start


def test_label_smoothing():
    y = torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.allclose(smooth_labels(y, 0.1), torch.tensor([[0.95, 0.05, 0.95]]))
    assert smooth_labels(y, 0.0) is y


# ---------------------------------------------------------------------------------------
# losses (hand-computed: l_cls([0, ln 3], [1, 0]) = -(ln 1/2 + ln 1/4) / 2 = 1.5 ln 2)
# ---------------------------------------------------------------------------------------
def _cams():
    cams = torch.zeros(1, 2, 2, 2)  # GAP = [0, 0] -> l_cls vs [1, 0] = ln 2
    cams_re = torch.zeros(1, 2, 2, 2)
    cams_re[0, 1] = LN3  # GAP = [0, ln 3] -> l_cls = 1.5 ln 2
    return cams, cams_re


def test_puzzle_loss_eq3():
    cams, cams_re = _cams()
    y = torch.tensor([[1.0, 0.0]])
    loss, logs = puzzle_loss(cams.mean((2, 3)), cams, cams_re, y, alpha_re=4.0)
    assert float(logs["cls"]) == pytest.approx(LN2)
    assert float(logs["re_cls"]) == pytest.approx(1.5 * LN2)
    assert float(logs["re"]) == pytest.approx(LN3 / 2)  # 4 of 8 elements differ by ln 3
    assert float(loss) == pytest.approx(2.5 * LN2 + 2 * LN3)
    # authors' code variant: only the image's classes (class 1 absent -> no reconstruction error)
    assert float(reconstruction_loss(cams, cams_re, y)) == 0.0
    assert float(reconstruction_loss(cams, cams_re, torch.tensor([[0.0, 1.0]]))) == pytest.approx(LN3 / 2)
    loss0, _ = puzzle_loss(cams.mean((2, 3)), cams, cams_re, y, alpha_re=0.0)
    assert float(loss0) == pytest.approx(2.5 * LN2)


def test_cse_occse_poc_noc_losses():
    oc_logits = torch.tensor([[0.0, LN3]])
    y_minus_r = torch.tensor([[1.0, 0.0]])
    assert float(cse_loss(oc_logits, y_minus_r)) == pytest.approx(1.5 * LN2)
    empty = cse_loss(torch.zeros(0, 2), torch.zeros(0, 2))
    assert float(empty) == 0.0 and not torch.isnan(empty)
    logits = torch.zeros(1, 2)
    loss, logs = occse_loss(logits, torch.tensor([[1.0, 1.0]]), oc_logits, y_minus_r, lambda_cse=0.3)
    assert float(logs["cls"]) == pytest.approx(LN2)
    assert float(loss) == pytest.approx(LN2 + 0.3 * 1.5 * LN2)
    cams, cams_re = _cams()
    loss, logs = poc_loss(cams.mean((2, 3)), cams, cams_re, torch.tensor([[1.0, 0.0]]), oc_logits, y_minus_r, 2.0, 0.5)
    assert float(loss) == pytest.approx(LN2 + 1.5 * LN2 + 2.0 * LN3 / 2 + 0.5 * 1.5 * LN2)
    assert set(logs) == {"cls", "re_cls", "re", "cse"}
    assert float(noc_loss(oc_logits, y_minus_r, 0.25)) == pytest.approx(0.25 * 1.5 * LN2)
    assert float(noc_loss(torch.zeros(0, 2), torch.zeros(0, 2), 1.0)) == 0.0
    # smoothed target, checked against the closed form of the multilabel soft-margin loss
    t = smooth_labels(torch.tensor([[1.0, 0.0]]), 0.1)
    s = torch.sigmoid(oc_logits)
    ref = -(t * torch.log(s) + (1 - t) * torch.log(1 - s)).mean()
    assert float(cse_loss(oc_logits, t)) == pytest.approx(float(ref), rel=1e-6)


def test_noc_objective_paper_and_authors():
    noc_term, cse = torch.tensor(0.7), torch.tensor(2.0)
    assert noc_objective(noc_term, cse, 0.3, "paper") is noc_term  # Eq. 10 alone
    assert float(noc_objective(noc_term, cse, 0.3, "authors")) == pytest.approx(0.7 + 0.3 * 2.0)
    with pytest.raises(ValueError, match="noc_objective"):
        noc_objective(noc_term, cse, 0.3, "both")


def test_params_defaults_and_validation():
    p = PNOCParams()
    assert (p.alpha_re_from, p.alpha_re_to, p.alpha_re_ramp) == (0.0, 4.0, 0.5)
    assert (p.lambda_cse_from, p.lambda_cse_to, p.lambda_cse_ramp) == (0.3, 1.0, 1.0)
    assert (p.lambda_noc_from, p.lambda_noc_to, p.delta_noc, p.k_noc) == (0.0, 1.0, 0.2, 1)
    assert POCParams().label_smoothing == 0.1
    assert p.re_mask == "labels"  # authors' code; Eq. 3 as printed ("none") collapsed on MSRC
    with pytest.raises(ValueError, match="psi_norm"):
        POCParams(psi_norm="channel")
    with pytest.raises(ValueError, match="k_noc"):
        PNOCParams(k_noc=0)
    assert p.noc_objective == "paper"  # Algorithm 1 as printed, until the val split chooses
    assert PNOCParams(noc_objective="authors").noc_objective == "authors"
    with pytest.raises(ValueError, match="noc_objective"):
        PNOCParams(noc_objective="both")
    cfg = load_config(None, {"method.name": "occse", "method.psi_norm": "batch", "model.pretrained": "none"})
    assert OCCSEModule(cfg, NUM_CLASSES).hp.psi_norm == "batch"
    with pytest.raises(ConfigError, match="alpha_re_to"):  # a Puzzle parameter is unknown to OC-CSE
        OCCSEModule(load_config(None, {"method.name": "occse", "method.alpha_re_to": 2, "model.pretrained": "none"}), 3)
    with pytest.raises(ConfigError, match="delta_noc"):
        PNOCModule(load_config(None, {"method.name": "pnoc", "method.delta_noc": 2, "model.pretrained": "none"}), 3)
    with pytest.raises(ConfigError, match="noc_objective"):
        PNOCModule(load_config(None, {"method.name": "pnoc", "method.noc_objective": "x", "model.pretrained": "none"}), 3)


# ---------------------------------------------------------------------------------------
# modules: tiny random backbones, 64 px
# ---------------------------------------------------------------------------------------
def _save_cam(path, num_classes):
    """A randomly initialised CAMNet saved the way the CAM baseline saves its model."""
    torch.manual_seed(0)
    cfg = load_config(None, {"model.pretrained": "none"})
    net = build_cam_net(cfg.model, num_classes)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def oc_checkpoint(tmp_path_factory):
    return _save_cam(tmp_path_factory.mktemp("cam") / "model.safetensors", NUM_CLASSES)


def _cfg(name: str, oc_checkpoint=None, **method):
    over = {"method.name": name, "model.pretrained": "none", "optim.lr": 0.01, "seed": 0}
    if oc_checkpoint is not None and name != "puzzle":
        over["method.oc_checkpoint"] = str(oc_checkpoint)
    over.update({f"method.{k}": v for k, v in method.items()})
    return load_config(None, over)


class RandomSet(torch.utils.data.Dataset):
    """Random 64 px images; image 1 of every pair has no foreground class (as some MSRC images)."""

    def __init__(self, n: int = 4, empty: bool = True):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, 64, 64, generator=g)
        self.labels = torch.tensor([[1.0, 0, 1], [0, 0, 0] if empty else [0, 1, 0]] * (n // 2))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "id": str(i)}


def _loader(empty: bool = True):
    return torch.utils.data.DataLoader(RandomSet(4, empty), batch_size=2, shuffle=False)


def _trainer(**kw):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["puzzle", "occse", "poc"])
def test_two_training_steps(name, oc_checkpoint):
    L.seed_everything(0, verbose=False)
    module = get_method(name)(_cfg(name, oc_checkpoint), NUM_CLASSES)
    assert module.cam_generator() is module.net
    before = _snapshot(module.net)
    oc_before = _snapshot(module.oc) if hasattr(module, "oc") else None
    trainer = _trainer(max_steps=2)
    trainer.fit(module, _loader())
    assert trainer.global_step == 2
    assert not _same(before, _snapshot(module.net))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    if name != "occse":
        # last logged step: progress 1/2 -> lambda_re at the end of its ramp (first half)
        assert "train/re" in metrics and float(metrics["train/alpha_re"]) == pytest.approx(4.0)
    if oc_before is not None:
        from safetensors.torch import load_file

        saved = load_file(str(oc_checkpoint))
        assert _same(saved, _snapshot(module.oc))  # loaded from the CAM checkpoint, then never moved
        assert not module.oc.training
        opt_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        assert not any(id(p) in opt_ids for p in module.oc.parameters())
        assert "train/cse" in metrics


def test_oc_checkpoint_errors_name_the_file(tmp_path, oc_checkpoint):
    missing = tmp_path / "nope" / "model.safetensors"
    module = OCCSEModule(_cfg("occse", missing), NUM_CLASSES)
    with pytest.raises(FileNotFoundError, match=r"nope/model\.safetensors.*configs/msrc/cam\.yaml"):
        _trainer(max_steps=1).fit(module, _loader())
    wrong = PNOCModule(_cfg("pnoc", oc_checkpoint), NUM_CLASSES + 1)  # other number of classes
    with pytest.raises(ValueError, match=r"cam\d*/model\.safetensors: weights do not fit.*classifier"):
        _trainer(max_steps=1).fit(wrong, _loader())


def test_cse_skips_images_without_foreground(oc_checkpoint):
    module = OCCSEModule(_cfg("occse", oc_checkpoint), NUM_CLASSES)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return torch.zeros(x.shape[0], NUM_CLASSES), None

    images = torch.randn(3, 3, 64, 64)
    labels = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1, 1]])
    cams = torch.randn(3, NUM_CLASSES, 4, 4, requires_grad=True)
    r = sample_present_class(labels, torch.Generator().manual_seed(0))
    assert r[1] == -1
    oc_logits, oc_targets = module.cse_inputs(images, labels, cams, r, Probe())
    assert seen == [2] and oc_logits.shape == oc_targets.shape == (2, NUM_CLASSES)
    assert torch.equal(oc_targets, remove_class(labels[[0, 2]], r[[0, 2]]))
    assert torch.isfinite(cse_loss(oc_logits, oc_targets))
    oc_logits, oc_targets = module.cse_inputs(images[1:2], labels[1:2], cams[1:2], r[1:2], Probe())
    assert seen == [2] and oc_logits.shape == (0, NUM_CLASSES)  # no classifier call at all
    assert float(cse_loss(oc_logits, oc_targets)) == 0.0


class SpyPNOC(PNOCModule):
    """Records, around each phase, both networks' weights, the noc gradients and which
    networks required gradients at backward time."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.events = []
        self.requires = []

    def manual_backward(self, loss, *args, **kwargs):
        self.requires.append((any(p.requires_grad for p in self.net.parameters()),
                              any(p.requires_grad for p in self.noc.parameters())))
        super().manual_backward(loss, *args, **kwargs)

    def generator_phase(self, batch, r, progress):
        g0, n0 = _snapshot(self.net), _snapshot(self.noc)
        grads0 = [None if p.grad is None else p.grad.clone() for p in self.noc.parameters()]
        out = super().generator_phase(batch, r, progress)
        grads1 = [p.grad for p in self.noc.parameters()]
        self.events.append(("gen", g0, _snapshot(self.net), n0, _snapshot(self.noc), (grads0, grads1)))
        return out

    def noc_phase(self, batch, r, cams, progress):
        g0, n0 = _snapshot(self.net), _snapshot(self.noc)
        out = super().noc_phase(batch, r, cams, progress)
        self.events.append(("noc", g0, _snapshot(self.net), n0, _snapshot(self.noc), None))
        return out


def test_pnoc_alternation_moves_only_the_right_network(oc_checkpoint):
    L.seed_everything(0, verbose=False)
    module = SpyPNOC(_cfg("pnoc", oc_checkpoint, lambda_noc_from=1.0), NUM_CLASSES)
    trainer = _trainer(max_steps=4)  # Lightning counts both optimisers: 2 batches x 2 steps
    trainer.fit(module, _loader(empty=False))
    assert [e[0] for e in module.events] == ["gen", "noc", "gen", "noc"]
    for kind, g0, g1, n0, n1, noc_grads in module.events:
        if kind == "gen":
            assert not _same(g0, g1), "generator did not move in its phase"
            assert _same(n0, n1), "noc moved while the generator was trained"
            before, after = noc_grads  # noc's .grad (None, or left from its last step) untouched
            assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before, after)), \
                "generator loss leaked gradients into noc"
        else:
            assert _same(g0, g1), "generator moved while noc was trained"
            assert not _same(n0, n1), "noc did not move in its phase"
    assert module.requires == [(True, False), (False, True), (True, False), (False, True)]
    assert module.step_index() == 2 and trainer.global_step == 4
    # after training every trainable parameter is trainable again
    assert any(p.requires_grad for p in module.noc.parameters())
    # the noc starts from the CAM baseline and the generator is what inference sees
    assert module.cam_generator() is module.net


def test_pnoc_k_noc_and_empty_batches(oc_checkpoint):
    L.seed_everything(0, verbose=False)
    module = SpyPNOC(_cfg("pnoc", oc_checkpoint, k_noc=2), NUM_CLASSES)
    loader = torch.utils.data.DataLoader(RandomSet(4, empty=False), batch_size=1, shuffle=False)
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, loader)
    assert [e[0] for e in module.events] == ["gen", "noc", "gen", "gen", "noc", "gen"]
    assert module.step_index() == 4 and module.progress == 1.0
    # poly schedules of both networks ran over the 4 generator steps
    for cfg in trainer.lr_scheduler_configs:
        assert cfg.scheduler.last_epoch == 4


def test_pnoc_resumes_from_weights_only_checkpoint(tmp_path, msrc_root):
    """Through the shared trainer on 4 real MSRC images: 1 epoch, then resume to 2 from
    last.ckpt with weights_only=True; noc's trained state comes back from the checkpoint."""
    from wsss.training import train

    oc_checkpoint = _save_cam(tmp_path / "cam.safetensors", 16)  # MSRC: 16 foreground classes
    over = {
        "method.name": "pnoc", "method.oc_checkpoint": str(oc_checkpoint), "model.pretrained": "none",
        "data.root": str(msrc_root), "data.limit": 4, "data.crop_size": 64, "data.resize_long": [64, 96],
        "data.batch_size": 2, "data.num_workers": 0, "trainer.max_epochs": 1, "trainer.accelerator": "cpu",
        "output_dir": str(tmp_path / "run"),
    }
    train(load_config(None, over))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert len(state["optimizer_states"]) == 2 and len(state["lr_schedulers"]) == 2
    assert any(k.startswith("noc.") for k in state["state_dict"])
    over["trainer.max_epochs"] = 2
    train(load_config(None, over))
    meta = (tmp_path / "run" / "model.json").read_text()
    assert '"resumed": true' in meta and '"epochs": 2' in meta
    state2 = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state2["lr_schedulers"][0]["last_epoch"] == 4  # 2 batches per epoch, both epochs counted



# ---------------------------------------------------------------------------------------
# training calls the tested functions; the two noc objectives (tiny nets, hand-built cases)
# ---------------------------------------------------------------------------------------
class TinyCAM(torch.nn.Module):
    """A CAM generator small enough for hand checks: 1x1 conv 3 -> 4, tanh, 8x8 average pool
    (output stride 8), bias-free 1x1 classifier; forward -> (GAP logits, raw CAMs)."""

    def __init__(self, seed: int):
        super().__init__()
        self.feat = torch.nn.Conv2d(3, 4, 1)
        self.classifier = torch.nn.Conv2d(4, NUM_CLASSES, 1, bias=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        cams = self.classifier(F.avg_pool2d(torch.tanh(self.feat(x)), 8))
        return cams.mean(dim=(2, 3)), cams


def _spy(fn, calls):
    def wrapped(*a, **k):
        out = fn(*a, **k)
        calls.append((fn.__name__, out))
        return out

    return wrapped


@pytest.mark.parametrize(
    "name, method, fn",
    [
        ("puzzle", {"alpha_re_from": 2.0}, puzzle_loss),
        ("occse", {"psi_norm": "batch", "label_smoothing": 0.1}, occse_loss),
        ("poc", {"alpha_re_from": 1.5, "re_mask": "none"}, poc_loss),
    ],
)
def test_training_loss_is_the_model_function(name, method, fn, monkeypatch):
    """compute_loss (what Lightning back-propagates) returns the very tensor the model.py
    function returned, and its value equals that function on tensors computed by hand."""
    module = get_method(name)(_cfg(name, **method), NUM_CLASSES)
    module.net = TinyCAM(0)
    if hasattr(module, "oc"):
        module.oc = TinyCAM(1).requires_grad_(False)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 1]])
    r = torch.tensor([2, -1, 1])
    monkeypatch.setattr(module, "sample_classes", lambda _labels: r)
    calls = []
    for f in (puzzle_loss, occse_loss, poc_loss):
        monkeypatch.setattr(pnoc_module, f.__name__, _spy(f, calls))
    loss, logs = module.compute_loss({"image": images, "label": labels})
    assert [c[0] for c in calls] == [fn.__name__] and calls[0][1][0] is loss

    # by hand: the same network, the paper's pieces, progress 0 (ramps at their start values)
    hp = module.hp
    t = smooth_labels(labels, hp.label_smoothing)
    logits, cams = module.net(images)
    if name == "puzzle":
        cams_re = merge(module.net(tile(images, 2))[1], 3, 2)
        expected, _ = puzzle_loss(logits, cams, cams_re, t, 2.0, labels)
        assert float(logs["alpha_re"]) == 2.0
    else:
        valid = torch.tensor([0, 2])
        mask = erasure_map(cams[valid], r[valid], (32, 32), hp.psi_norm, hp.psi_eps)
        oc_logits = module.oc(soft_erase(images[valid], mask))[0]
        oc_t = smooth_labels(remove_class(labels[valid], r[valid]), hp.label_smoothing)
        assert float(logs["lambda_cse"]) == pytest.approx(0.3)
        if name == "occse":
            expected, _ = occse_loss(logits, t, oc_logits, oc_t, 0.3)
        else:
            cams_re = merge(module.net(tile(images, 2))[1], 3, 2)
            expected, _ = poc_loss(logits, cams, cams_re, t, oc_logits, oc_t, 1.5, 0.3, None)
    assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-7)
    assert loss.requires_grad


def test_psi_norm_batch_vs_image_in_the_soft_erasure():
    """Hand-computed erased images on 2 labelled images (+ 1 without a class, excluded from
    the batch max as the authors' ``features[label_mask == 1]``): image peaks 4 and 8."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], NUM_CLASSES), None

    cams = torch.full((3, NUM_CLASSES, 2, 2), 100.0)  # every other map is huge: must not count
    cams[0, 1] = torch.tensor([[1.0, -2.0], [4.0, 2.0]])
    cams[2, 2] = torch.tensor([[3.0, 0.0], [0.0, 8.0]])
    labels = torch.tensor([[0.0, 1, 0], [0, 0, 0], [0, 0, 1]])
    r = torch.tensor([1, -1, 2])
    images = torch.full((3, 3, 2, 2), 2.0)  # same size as the CAMs: no resampling
    expected = {
        # x (1 - psi): image 0 divided by its own max 4, or by the batch max 8
        "image": [torch.tensor([[1.5, 2.0], [0.0, 1.0]]), torch.tensor([[1.25, 2.0], [2.0, 0.0]])],
        "batch": [torch.tensor([[1.75, 2.0], [1.0, 1.5]]), torch.tensor([[1.25, 2.0], [2.0, 0.0]])],
    }
    for mode, (e0, e1) in expected.items():
        module = OCCSEModule(_cfg("occse", psi_norm=mode, psi_eps=0.0), NUM_CLASSES)
        seen.clear()
        module.cse_inputs(images, labels, cams, r, Probe())
        (x,) = seen
        assert x.shape == (2, 3, 2, 2)
        for c in range(3):
            assert torch.allclose(x[0, c], e0) and torch.allclose(x[1, c], e1), mode


class TinySet(torch.utils.data.Dataset):
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(3)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.labels = torch.tensor([[1.0, 0, 1], [0, 1, 1], [0, 1, 0]] * n)[:n]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "id": str(i)}


def _grads(net):
    return [None if p.grad is None else p.grad.detach().clone() for p in net.parameters()]


class TinyPNOC(PNOCModule):
    """P-NOC on two TinyCAMs; records r, the gradients each optimiser steps on, noc's
    gradients before every backward and which networks required gradients then."""

    def build_net(self):
        return TinyCAM(0)

    def build_classifier(self, bn_mode="frozen"):
        return TinyCAM(1)

    def setup(self, stage):  # no checkpoint to load: noc starts from TinyCAM(1)
        self.rs, self.at_step, self.before_backward, self.requires = [], [], [], []

    def sample_classes(self, labels):
        r = super().sample_classes(labels)
        self.rs.append(r)
        return r

    def configure_optimizers(self):
        opts, scheds = super().configure_optimizers()
        for tag, opt in zip(("gen", "noc"), opts):
            opt.register_step_pre_hook(lambda o, a, k, tag=tag: self.at_step.append((tag, _grads(self.net), _grads(self.noc))))
        return opts, scheds

    def manual_backward(self, loss, *args, **kwargs):
        self.before_backward.append(_grads(self.noc))
        self.requires.append((any(p.requires_grad for p in self.net.parameters()),
                              any(p.requires_grad for p in self.noc.parameters())))
        super().manual_backward(loss, *args, **kwargs)


def _close(a, b):
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("objective", ["paper", "authors"])
def test_pnoc_noc_objective_gradients_match_autograd(objective, monkeypatch):
    """One batch of P-NOC through Lightning; the gradients each optimiser steps on are checked
    against autograd of poc_loss / noc_loss / noc_objective on the same tensors, by hand."""
    calls = []
    for f in (poc_loss, noc_loss):
        monkeypatch.setattr(pnoc_module, f.__name__, _spy(f, calls))
    L.seed_everything(0, verbose=False)
    module = TinyPNOC(_cfg("pnoc", noc_objective=objective, alpha_re_from=1.0, lambda_noc_from=0.5), NUM_CLASSES)
    gen0, noc0 = copy.deepcopy(module.net), copy.deepcopy(module.noc)
    data = TinySet(2)
    trainer = _trainer(max_epochs=1, log_every_n_steps=1)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2, shuffle=False))
    assert [c[0] for c in calls] == ["poc_loss", "noc_loss"]  # the tested functions are the objective

    # by hand, from the weights before the step (progress 0: alpha_re 1, lambda_cse 0.3, lambda_noc 0.5)
    images, labels, (r,) = data.images, data.labels, module.rs
    t = smooth_labels(labels, 0.1)
    logits, cams = gen0(images)
    cams_re = merge(gen0(tile(images, 2))[1], 2, 2)
    oc_logits = noc0(soft_erase(images, erasure_map(cams, r, (32, 32), "image", 1e-5)))[0]
    cse = cse_loss(oc_logits, smooth_labels(remove_class(labels, r), 0.1))
    l_gen, _ = poc_loss(logits, cams, cams_re, t, oc_logits, smooth_labels(remove_class(labels, r), 0.1), 1.0, 0.3, labels)
    hard = hard_erase(images, erasure_map(cams.detach(), r, (32, 32), "image", 1e-5), 0.2)
    l_noc = noc_loss(noc0(hard)[0], t, 0.5)
    theta_f, theta_noc = list(gen0.parameters()), list(noc0.parameters())
    d_gen_f = torch.autograd.grad(l_gen, theta_f, retain_graph=True)
    d_gen_noc = torch.autograd.grad(l_gen, theta_noc, retain_graph=True)
    d_noc_noc = torch.autograd.grad(l_noc, theta_noc, retain_graph=True)
    d_obj_noc = torch.autograd.grad(noc_objective(l_noc, cse, 0.3, objective), theta_noc)

    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(float(l_gen.detach()), rel=1e-6)
    assert float(trainer.callback_metrics["train/noc_objective"]) == pytest.approx(
        float(noc_objective(l_noc, cse, 0.3, objective).detach()), rel=1e-6)
    (tag_g, gen_grads_g, noc_grads_g), (tag_n, gen_grads_n, noc_grads_n) = module.at_step
    assert (tag_g, tag_n) == ("gen", "noc")
    assert _close(gen_grads_g, d_gen_f)  # f's step: d L_gen / d theta_f in both variants
    assert all(g is None for g in gen_grads_n)  # f's gradients zeroed before noc's step
    assert _close(noc_grads_n, d_obj_noc)  # noc steps on d noc_objective / d theta_noc
    if objective == "paper":
        assert all(g is None for g in noc_grads_g), "generator loss leaked into noc"
        assert _close(noc_grads_n, d_noc_noc)
        assert module.requires == [(True, False), (False, True)]
    else:
        assert _close(noc_grads_g, d_gen_noc)  # deposited by f's backward (authors' code)
        assert _close(noc_grads_n, [a + b for a, b in zip(d_gen_noc, d_noc_noc)])
        assert not _close(noc_grads_n, d_noc_noc)  # the two variants really differ
        assert module.requires == [(True, True), (False, True)]
    assert all(p.grad is None for p in module.noc.parameters())  # zeroed after noc's step


@pytest.mark.parametrize("objective", ["paper", "authors"])
def test_pnoc_k_noc_2_authors_accumulates_until_noc_steps(objective):
    """k_noc 2 over 3 batches: backwards gen0, noc0, gen1, gen2, noc2. With "authors" noc's
    gradient from gen1 is still there at gen2's backward (the authors zero it only after noc's
    step); with "paper" noc never holds a gradient before a backward."""
    L.seed_everything(0, verbose=False)
    module = TinyPNOC(_cfg("pnoc", noc_objective=objective, k_noc=2), NUM_CLASSES)
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, torch.utils.data.DataLoader(TinySet(3), batch_size=1, shuffle=False))
    assert [e[0] for e in module.at_step] == ["gen", "noc", "gen", "gen", "noc"]
    before = module.before_backward  # noc grads before each of the 5 backwards
    assert len(before) == 5
    if objective == "paper":
        assert all(g is None for grads in before for g in grads)
        return
    assert all(g is None for g in before[0]) and all(g is None for g in before[2])  # start, after noc0's step
    assert all(g is not None for g in before[1])  # gen0 deposited its part before noc0's backward
    gen1_noc_grads = module.at_step[2][2]
    assert all(g is not None for g in gen1_noc_grads)
    assert _close(before[3], gen1_noc_grads)  # kept into gen2's backward: accumulated, not zeroed
    assert not _close(module.at_step[3][2], gen1_noc_grads)  # gen2 added its own part


@pytest.mark.parametrize("noc_bn_mode", ["frozen", "batch_stats"])
def test_pnoc_noc_batchnorm_statistics(noc_bn_mode, oc_checkpoint):
    """noc classifies with the OC's running statistics (authors' ``Classifier(mode="fix")``) even
    when the generator's BatchNorm normalises by batch statistics (``model.bn_mode: batch_stats``,
    the MSRC recipe): noc's steps on hard-erased images must not move noc's running statistics,
    unless ``noc_bn_mode: batch_stats`` asks for it."""
    L.seed_everything(0, verbose=False)
    cfg = _cfg("pnoc", oc_checkpoint, lambda_noc_from=1.0, noc_bn_mode=noc_bn_mode)
    cfg.model.bn_mode = "batch_stats"
    module = SpyPNOC(cfg, NUM_CLASSES)
    _trainer(max_steps=4).fit(module, _loader(empty=False))
    stats = [k for k in module.noc.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert stats
    kinds = [e[0] for e in module.events]
    assert kinds == ["gen", "noc", "gen", "noc"]
    for kind, g0, g1, n0, n1, _ in module.events:
        moved = [k for k in stats if not torch.equal(n0[k], n1[k])]
        if kind == "noc" and noc_bn_mode == "batch_stats":
            assert moved, "batch_stats noc should update its running statistics"
        else:
            assert not moved, f"noc's running statistics moved in the {kind} phase: {moved[:3]}"
        if kind == "gen":  # the generator (batch_stats) does move its own statistics
            assert any(not torch.equal(g0[k], g1[k]) for k in g0 if k.endswith("running_mean"))
    with pytest.raises(ValueError, match="noc_bn_mode"):
        PNOCModule(_cfg("pnoc", oc_checkpoint, noc_bn_mode="trainable"), NUM_CLASSES)
