"""CPN: complementary patch masks, L_tcp / L_cpcr (OHEM) against hand-computed values, PCM and
PRCM, flip equivariance of inference, the cached SLIC superpixels, and a short fit on real MSRC
images through the frame's stage_train (extra_sources hook -> batch["superpixels"])."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsss.config import ConfigError, load_config
from wsss.data.superpixels import PAD_LABEL, SlicParams, SuperpixelSource, slic_labels
from wsss.io import read_json
from wsss.methods import get_method
from wsss.methods.cpn.model import (
    CPNNet,
    CPNParams,
    PatchMasks,
    branch_weights,
    complementary_masks,
    cp_pair,
    cpcr_loss,
    cpn_loss,
    grid_patch_ids,
    max_onehot,
    normalize_cams,
    object_region_relation,
    ohem_mean,
    pcm,
    pcm_affinity,
    prcm,
    refinement_input,
    scaled_grid_sizes,
    tcp_loss,
    tcp_term,
    with_background,
)
from wsss.methods.cpn.module import CPNModule, cpn_params

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "configs/msrc/cpn.yaml"
TINY = {"data.limit": 4, "trainer.max_epochs": 1, "data.crop_size": 64, "data.resize_long": [64, 96],
        "data.batch_size": 2, "data.num_workers": 0, "trainer.accelerator": "cpu", "model.pretrained": "none",
        "method.superpixel_workers": 1, "trainer.log_every_n_steps": 1}


def _cfg(**over):
    return load_config(CFG, {"model.pretrained": "none", **over})


# ---------------------------------------------------------------------------------------
# complementary patch masks (Sec. 3.1-3.2)
# ---------------------------------------------------------------------------------------


def _random_ids(b=3, s=40, n=30, pad=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(n, (b, s, s), generator=g)
    ids[:, :, s - pad:] = -1  # right strip = crop padding
    return ids


@pytest.mark.parametrize("sampling", ["bernoulli", "with_replacement"])
def test_masks_are_exact_complements_and_padding_is_hidden_in_both(sampling):
    ids = _random_ids()
    m = complementary_masks(ids, 0.5, torch.Generator().manual_seed(1), sampling)
    valid = (ids >= 0).float()
    assert torch.equal(m.visible_h + m.visible_hbar, valid)  # exact, not approximate
    assert torch.equal(m.visible_h * m.visible_hbar, torch.zeros_like(valid))
    assert (m.visible_h[:, :, -8:] == 0).all() and (m.visible_hbar[:, :, -8:] == 0).all()
    # a patch is wholly in one image of the pair
    for b in range(ids.shape[0]):
        for p in ids[b].unique().tolist():
            if p < 0:
                continue
            vals = m.visible_h[b][ids[b] == p].unique().tolist()
            assert len(vals) == 1 and vals[0] == float(not m.hidden[b, p])
    # images: I_h + I_hbar = I exactly where I is 0 on padding (the augmentation's container)
    images = torch.randn(3, 3, 40, 40) * valid[:, None]
    i_h, i_hbar = cp_pair(images, m)
    assert torch.equal(i_h + i_hbar, images)
    assert (i_h * (1 - m.visible_h[:, None]) == 0).all() and (i_hbar * (1 - m.visible_hbar[:, None]) == 0).all()


@pytest.mark.parametrize("p_h", [0.5, 0.2])
def test_bernoulli_hiding_respects_p_h_on_average(p_h):
    ids = torch.arange(64 * 64).view(1, 64, 64).repeat(8, 1, 1)  # 8 x 4096 one-pixel patches
    m = complementary_masks(ids, p_h, torch.Generator().manual_seed(0), "bernoulli")
    share = m.hidden.float().mean().item()
    assert abs(share - p_h) < 0.015  # 32768 draws: 3 sigma ~ 0.008
    lam = branch_weights(m, "pixels")
    assert abs(lam.mean().item() - (1 - p_h)) < 0.015


def test_authors_sampling_hides_fewer_than_p_h():
    ids = torch.arange(200).repeat_interleave(4).view(1, 20, 40).repeat(64, 1, 1)  # 200 patches per image
    m = complementary_masks(ids, 0.5, torch.Generator().manual_seed(0), "with_replacement")
    expected = 1 - (1 - 1 / 200) ** 100  # 100 draws with replacement among 200 ids: 0.394
    assert abs(m.hidden.float().mean().item() - expected) < 0.01
    assert (m.hidden.float().sum(1) <= 100).all()


def test_masks_are_reproducible_and_on_the_ids_device():
    ids = _random_ids()
    a = complementary_masks(ids, 0.5, torch.Generator().manual_seed(3))
    b = complementary_masks(ids, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a.visible_h, b.visible_h) and a.visible_h.device == ids.device
    with pytest.raises(ValueError, match="hide_prob"):
        complementary_masks(ids, 1.5)
    with pytest.raises(ValueError, match="integer"):
        complementary_masks(ids.float(), 0.5)


def test_mask_making_is_vectorised():
    # 16 crops of 448 x 448 with 300 superpixels each: the authors' per-pixel loop takes ~1.45 s
    # per image; one gather does the batch
    ids = torch.randint(300, (16, 448, 448))
    t = time.perf_counter()
    complementary_masks(ids, 0.5, torch.Generator().manual_seed(0))
    assert time.perf_counter() - t < 2.0


def test_lambda_pixels_and_patches_hand_computed():
    # one image, 2 x 4 crop: patch 0 = 3 px, patch 1 = 1 px, patch 2 = 2 px, 2 px padding
    ids = torch.tensor([[[0, 0, 0, 1], [2, 2, -1, -1]]])
    hidden = torch.tensor([[False, True, False]])
    vis_h = torch.tensor([[[1.0, 1, 1, 0], [1, 1, 0, 0]]])
    vis_hbar = torch.tensor([[[0.0, 0, 0, 1], [0, 0, 0, 0]]])
    m = PatchMasks(vis_h, vis_hbar, hidden, torch.tensor([[True, True, True]]))
    assert branch_weights(m, "pixels").tolist() == pytest.approx([5 / 6])  # 5 of 6 real pixels visible
    assert branch_weights(m, "patches").tolist() == pytest.approx([2 / 3])  # 1 - N_h / N = 1 - 1/3
    # the mask function agrees with the hand-made masks when patch 1 is the one hidden
    got = complementary_masks(ids, 0.0)
    assert torch.equal(got.visible_h + got.visible_hbar, (ids >= 0).float()) and got.visible_hbar.sum() == 0
    with pytest.raises(ValueError, match="mode"):
        branch_weights(m, "area")


def test_grid_patch_ids_hand_computed_and_scaled_sizes():
    valid = torch.ones(1, 4, 6)
    valid[0, :, 5] = 0
    ids = grid_patch_ids(valid, [2])
    assert ids.tolist() == [[[0, 0, 1, 1, 2, -1], [0, 0, 1, 1, 2, -1], [3, 3, 4, 4, 5, -1], [3, 3, 4, 4, 5, -1]]]
    assert scaled_grid_sizes([56, 112], 320, 448) == [40, 80]  # the paper's best K at crop 448 -> crop 320
    assert scaled_grid_sizes([56, 112], 448, 448) == [56, 112]
    assert scaled_grid_sizes([224, 448], 320, None) == [224, 448]
    top = {int(grid_patch_ids(torch.ones(1, 8, 8), [2, 4], torch.Generator().manual_seed(s)).max()) for s in range(20)}
    assert top == {15, 3}  # cell size 2 (ids 0..15) or 4 (ids 0..3): one size drawn per image, both occur


# ---------------------------------------------------------------------------------------
# L_tcp (Eq. 14), L_cpcr (Eq. 15) with OHEM: hand-computed
# ---------------------------------------------------------------------------------------

# B = 1, C = 1, a 1 x 2 CAM grid
Y_O = torch.tensor([[[[0.8, 0.2]]]])
Y_H = torch.tensor([[[[1.0, 0.0]]]])
Y_HB = torch.tensor([[[[0.0, 1.0]]]])
R_H = torch.tensor([[[[0.5, 0.5]]]])
R_HB = torch.tensor([[[[0.25, 1.0]]]])
LAM = torch.tensor([0.25])


def test_tcp_term_hand_computed_and_detached_pair():
    # 0.25 * [1, 0] + 0.75 * [0, 1] = [0.25, 0.75]; |. - [0.8, 0.2]| = [0.55, 0.55]
    y_o, y_h, y_hb = (t.clone().requires_grad_(True) for t in (Y_O, Y_H, Y_HB))
    t = tcp_term(y_o, y_h, y_hb, LAM)
    assert t.item() == pytest.approx(0.55)
    t.backward()
    assert y_h.grad is None and y_hb.grad is None
    assert y_o.grad.tolist() == [[[[0.5, -0.5]]]]  # d mean|x - y_o| / d y_o = -sign / 2
    y_o, y_h, y_hb = (t.clone().requires_grad_(True) for t in (Y_O, Y_H, Y_HB))
    tcp_term(y_o, y_h, y_hb, LAM, detach_pair=False).backward()
    assert y_h.grad.tolist() == [[[[-0.125, 0.125]]]]  # lambda * sign / 2


def test_tcp_loss_sums_raw_and_refined_and_the_refined_detach_option():
    raw = tuple(t.clone().requires_grad_(True) for t in (Y_O, Y_H, Y_HB))
    ref = tuple(t.clone().requires_grad_(True) for t in (Y_O, R_H, R_HB))
    loss, logs = tcp_loss(raw, ref, LAM, detach_refined=True)
    # refined: 0.25 * [.5, .5] + 0.75 * [.25, 1] = [0.3125, 0.875]; |. - [0.8, 0.2]| = [0.4875, 0.675]
    assert logs["tcp_raw"].item() == pytest.approx(0.55) and logs["tcp_refined"].item() == pytest.approx(0.58125)
    assert loss.item() == pytest.approx(1.13125)
    loss.backward()
    assert raw[1].grad is None and ref[1].grad is None and ref[0].grad is not None
    ref = tuple(t.clone().requires_grad_(True) for t in (Y_O, R_H, R_HB))
    loss, _ = tcp_loss(raw, ref, LAM, detach_refined=False)  # the authors' code
    loss.backward()
    assert ref[1].grad is not None and raw[1].grad is None  # the raw term stays detached


def test_ohem_mean_keeps_the_largest_per_image():
    x = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [0.0, 0.0, 10.0, 0.0, 6.0]])
    assert ohem_mean(x, 0.4).item() == pytest.approx((5 + 4 + 10 + 6) / 4)  # k = 2 per image
    assert ohem_mean(x, 1.0).item() == pytest.approx(x.mean().item())
    assert ohem_mean(x, 0.01).item() == pytest.approx((5 + 10) / 2)  # at least one per image
    with pytest.raises(ValueError):
        ohem_mean(x, 0.0)


def test_cpcr_paper_form_hand_computed():
    # with background (Eq. 16): Y_o = bg [.2, .8], fg [.8, .2]
    # target for Y~_hbar: Y_o - .25 Y_h = bg [.2, .55], fg [.55, .2]; .75 Y~_hbar = bg [.5625, 0], fg [.1875, .75]
    #   |diff| = [.3625, .55, .3625, .55] -> OHEM 50 %: .55; plain mean .45625
    # target for Y~_h: Y_o - .75 Y_hbar = bg [-.55, .8], fg [.8, -.55]; .25 Y~_h = .125 everywhere
    #   |diff| = .675 everywhere
    loss, logs = cpcr_loss((Y_O, Y_H, Y_HB), (R_H, R_HB), LAM, ohem_ratio=0.5, form="paper")
    assert logs["cpcr_hbar"].item() == pytest.approx(0.55) and logs["cpcr_h"].item() == pytest.approx(0.675)
    assert loss.item() == pytest.approx(1.225)
    loss_all, _ = cpcr_loss((Y_O, Y_H, Y_HB), (R_H, R_HB), LAM, ohem_ratio=1.0, form="paper")
    assert loss_all.item() == pytest.approx(0.45625 + 0.675)


def test_cpcr_authors_form_hand_computed():
    # background after scaling: .25 Y_h -> fg [.25, 0], bg [.75, 1]; Y_o - that = bg [-.55, -.2], fg [.55, .2]
    #   max_onehot -> bg [0, 0], fg [.55, .2]; .75 Y~_hbar -> fg [.1875, .75], bg [.8125, .25]
    #   |diff| = bg [.8125, .25], fg [.3625, .55] -> top 2: (.8125 + .55) / 2 = .68125
    # .75 Y_hbar -> fg [0, .75], bg [1, .25]; Y_o - that = bg [-.8, .55], fg [.8, -.55] -> bg [0, .55], fg [.8, 0]
    #   .25 Y~_h -> fg [.125, .125], bg [.875, .875]; |diff| = bg [.875, .325], fg [.675, .125] -> .775
    loss, logs = cpcr_loss((Y_O, Y_H, Y_HB), (R_H, R_HB), LAM, ohem_ratio=0.5, form="authors")
    assert logs["cpcr_hbar"].item() == pytest.approx(0.68125) and logs["cpcr_h"].item() == pytest.approx(0.775)
    assert loss.item() == pytest.approx(1.45625)


def test_cpcr_trains_only_the_refined_pair():
    raw = tuple(t.clone().requires_grad_(True) for t in (Y_O, Y_H, Y_HB))
    ref = tuple(t.clone().requires_grad_(True) for t in (R_H, R_HB))
    loss, _ = cpcr_loss(raw, ref, LAM)
    loss.backward()
    assert all(t.grad is None for t in raw) and all(t.grad is not None for t in ref)


def test_normalisation_background_and_max_onehot():
    cams = torch.tensor([[[[-1.0, 2.0, 4.0]], [[1.0, 1.0, 3.0]]]])
    labels = torch.tensor([[1.0, 0.0]])
    assert normalize_cams(cams, labels, "max").flatten().tolist() == pytest.approx([0.0, 0.5, 1.0, 0.0, 0.0, 0.0], abs=1e-4)
    mm = normalize_cams(cams, None, "minmax")[0, 1, 0].tolist()  # (p - 1) / (3 - 1)
    assert mm == pytest.approx([0.0, 0.0, 1.0], abs=1e-4)
    fg = torch.tensor([[[[0.2, 0.9]], [[0.5, 0.1]]]])
    assert with_background(fg).flatten().tolist() == pytest.approx([0.5, 0.1, 0.2, 0.9, 0.5, 0.1])
    assert with_background(fg, 2.0)[0, 0, 0].tolist() == pytest.approx([0.25, 0.01])
    assert max_onehot(torch.tensor([[[[0.3]], [[-0.1]], [[0.2]]]])).flatten().tolist() == pytest.approx([0.3, 0.0, 0.0])
    with pytest.raises(ValueError, match="mode"):
        normalize_cams(cams, None, "l2")


# ---------------------------------------------------------------------------------------
# PCM (Eq. 9-10) and PRCM (Eq. 11-12)
# ---------------------------------------------------------------------------------------


def test_pcm_affinity_rows_are_normalised():
    torch.manual_seed(0)
    g = torch.randn(2, 8, 5, 7)
    aff = pcm_affinity(g)
    assert aff.shape == (2, 35, 35) and (aff >= 0).all()
    assert torch.allclose(aff.sum(-1), torch.ones(2, 35), atol=1e-4)
    f = g.flatten(2) / g.flatten(2).norm(dim=1, keepdim=True)
    cos = torch.relu(f.transpose(1, 2) @ f)  # the ReLU'd cosine (Eq. 10) is symmetric; A = its row-normalised form
    assert torch.allclose(cos, cos.transpose(1, 2), atol=1e-6)
    assert torch.allclose(aff, cos / cos.sum(-1, keepdim=True), atol=1e-4)
    # a constant CAM stays constant (rows are convex weights); identical features average the CAM
    cam = torch.rand(2, 4, 5, 7)
    assert torch.allclose(pcm(torch.ones(2, 4, 5, 7), g), torch.ones(2, 4, 5, 7), atol=1e-4)
    same = torch.ones(2, 8, 5, 7)
    assert torch.allclose(pcm(cam, same), cam.mean(dim=(2, 3), keepdim=True).expand_as(cam), atol=1e-4)


def test_prcm_shapes_and_the_authors_reshape():
    torch.manual_seed(0)
    b, k, c1, d, h, w = 2, 5, 11, 7, 3, 4
    cam, x = torch.rand(b, k, h, w), torch.randn(b, c1, h, w)
    phi, g = nn.Conv2d(c1, d, 1, bias=False), nn.Conv2d(c1, d, 1, bias=False)
    z = object_region_relation(cam, x)
    assert z.shape == (b, k, c1)
    # Z_k = sum_i softmax_i(Y_k) X_i (soft region pooling)
    p = torch.softmax(cam[0, 2].flatten(), 0)
    assert torch.allclose(z[0, 2], (x[0].flatten(1) * p).sum(1), atol=1e-5)
    outs = {}
    for form in ("paper", "authors"):
        y, p_r = prcm(cam, x, phi, g, form)
        assert y.shape == (b, k, h, w) and p_r.shape == (b, k, h, w)
        outs[form] = p_r
    # paper: P_R[k] = relu(phi Z_k) . relu(g X) / sqrt(K); authors: the (D, K) conv output read as (K, D)
    e = torch.relu(phi(z.transpose(1, 2).unsqueeze(-1)))  # (B, D, K, 1)
    gx = torch.relu(g(x)).flatten(2)
    paper = torch.bmm(e.squeeze(-1).transpose(1, 2), gx) / k ** 0.5
    authors = torch.bmm(e.reshape(b, k, d), gx) / k ** 0.5
    assert torch.allclose(outs["paper"].flatten(2), paper, atol=1e-5)
    assert torch.allclose(outs["authors"].flatten(2), authors, atol=1e-5)
    assert not torch.allclose(paper, authors)
    # Y_prcm = Y o softmax over the pixels
    y, _ = prcm(cam, x, phi, g, "paper")
    assert torch.allclose(y.flatten(2), cam.flatten(2) * torch.softmax(paper, -1), atol=1e-6)
    with pytest.raises(ValueError, match="form"):
        prcm(cam, x, phi, g, "code")


def test_refinement_input_without_labels_or_gradient():
    cams = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]]]], requires_grad=True)
    r = refinement_input(cams)
    assert not r.requires_grad and r.shape == (1, 3, 1, 2)
    # normalised fg [[1, 0], [1/3, 1]] -> non-max zeroed: [[1, 0], [0, 1]]; bg = 1 - max = [0, 0]
    assert r.flatten().tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0, 0.0, 1.0], abs=1e-4)


def _tiny_net(prcm_form="paper"):
    cfg = _cfg()
    from wsss.methods.base import build_backbone

    torch.manual_seed(0)
    return CPNNet(build_backbone(cfg.model), 4, "torch_default", (-3, -2), prcm_form).eval()


def test_refinement_is_blocked_from_the_backbone_and_the_classifier():
    net = _tiny_net()
    net.train()
    out = net.forward_all(torch.randn(2, 3, 64, 64))
    assert out["refined"].shape == (2, 5, 4, 4) and out["cams"].shape == (2, 4, 4, 4) and out["logits"].shape == (2, 4)
    out["refined"].sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters()) and net.classifier.weight.grad is None
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in (net.proj_a, net.proj_b, net.g, net.phi))


def test_prcm_none_makes_the_refined_cam_pcm_alone():
    """Table 2's rows before "+ PRCM": refined = Y_pcm (Eq. 9-10) and no phi parameters."""
    from wsss.methods.cpn.model import pcm, refinement_input

    with_prcm, without = _tiny_net("paper"), _tiny_net("none")
    assert without.phi is None and sum(p.numel() for p in with_prcm.parameters()) > sum(p.numel() for p in without.parameters())
    x = torch.randn(2, 3, 64, 64)
    out = without.forward_all(x)
    with torch.no_grad():
        _, stages = without.backbone.forward_stages(x)
        feats = without.aggregated_features(x, stages[without.pcm_stages[0]], stages[without.pcm_stages[1]], tuple(out["cams"].shape[-2:]))
        want = pcm(refinement_input(out["cams"]), without.g(feats))
    assert torch.allclose(out["refined"], want, atol=1e-6)
    with pytest.raises(ValueError, match="prcm_form"):
        _tiny_net("nothing")


@pytest.mark.parametrize("form", ["paper", "authors"])
def test_refinement_commutes_with_a_horizontal_flip(form):
    net = _tiny_net(form)
    cams, feats = torch.randn(2, 4, 5, 7), torch.randn(2, 195, 5, 7)
    with torch.no_grad():
        a = net.refine(cams.flip(-1), feats.flip(-1))
        b = net.refine(cams, feats).flip(-1)
    assert torch.allclose(a, b, atol=1e-5)


def test_inference_is_flip_equivariant():
    from wsss.inference.tta import multiscale_cam

    net = _tiny_net()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    hi, st = multiscale_cam(net, image, [0, 2], scales=(1.0, 0.5), flip=True, channels_last=False)
    hi_f, st_f = multiscale_cam(net, np.ascontiguousarray(image[:, ::-1]), [0, 2], scales=(1.0, 0.5), flip=True, channels_last=False)
    assert hi.shape == (2, 48, 80) and np.isfinite(hi).all() and hi.max() > 0
    np.testing.assert_allclose(hi_f, hi[:, :, ::-1], atol=1e-4)
    np.testing.assert_allclose(st_f, st[:, :, ::-1], atol=1e-4)
    # the generator returns the refined CAM's foreground channels (inference_cam: refined)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, cams = net(x)
        assert torch.equal(cams, net.forward_all(x)["refined"][:, 1:])
        net.inference_cam = "raw"
        assert torch.equal(net(x)[1], net.forward_all(x)["cams"])


# ---------------------------------------------------------------------------------------
# module, params, configs
# ---------------------------------------------------------------------------------------


def test_params_validation_names_the_key():
    assert CPNParams().n_segments == 200 and CPNParams().hide_prob == 0.5
    for key, bad in [("patches", "hex"), ("hide_prob", 1.5), ("ohem_ratio", 0), ("grid_sizes", []), ("n_segments", 0),
                     ("cpcr_form", "x"), ("prcm_form", "x"), ("tcp_refined_detach", "yes"), ("pcm_stages", [1]),
                     ("lambda_mode", "area"), ("superpixel_workers", 0), ("w_tcp", -1)]:
        with pytest.raises(ValueError, match=f"method.{key}"):
            CPNParams(**{key: bad})
    with pytest.raises(ConfigError, match="method.hide_prob"):
        CPNModule(_cfg(**{"method.hide_prob": 2.0}), 4)
    with pytest.raises(ConfigError, match="no parameter"):
        cpn_params(_cfg(**{"method.p_h": 0.5}))
    with pytest.raises(ValueError, match="method.pcm_stages"):
        CPNModule(_cfg(**{"method.pcm_stages": [-3, 9]}), 4)


def test_both_configs_resolve_with_their_sources():
    msrc = load_config(CFG)
    voc = load_config(REPO / "configs/voc12/cpn.yaml")
    assert msrc.method_name == voc.method_name == "cpn" and get_method("cpn") is CPNModule
    # the same method values but inference_cam, which MSRC's val split chose (raw); only the recipes differ
    assert dataclasses.replace(cpn_params(msrc), inference_cam="refined") == cpn_params(voc)
    assert cpn_params(msrc).inference_cam == "raw" and cpn_params(voc).inference_cam == "refined"
    assert (voc.data.batch_size, voc.trainer["max_epochs"], voc.optim.lr, voc.data.crop_size) == (4, 8, 0.01, 448)
    assert voc.data.color_jitter == {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.1}
    assert msrc.data.crop_size == 320 and msrc.data.color_jitter is None
    for path in (CFG, REPO / "configs/voc12/cpn.yaml"):
        for line in path.read_text().splitlines():
            if line.startswith("  ") and ":" in line and not line.strip().startswith("#") and line.split(":", 1)[1].strip():
                assert "#" in line or line.strip().startswith("name:"), f"{path.name}: no source: {line}"


def _batch(b=2, s=64, c=4):
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(b, s, s)
    valid[:, :, 48:] = 0
    images = torch.randn(b, 3, s, s, generator=g) * valid[:, None]
    labels = torch.zeros(b, c)
    labels[0, 1] = labels[1, 2] = labels[1, 3] = 1
    sp = torch.arange(s * s).view(1, s, s).div(64, rounding_mode="floor").repeat(b, 1, 1)  # one row = one patch
    sp = torch.where(valid > 0, sp, torch.full_like(sp, PAD_LABEL))
    return {"image": images, "label": labels, "valid": valid, "superpixels": sp}


def test_compute_loss_is_cpn_loss_on_the_batch():
    cfg = _cfg()
    module = CPNModule(cfg, 4)
    assert module.extra_inputs == ("superpixels",) and CPNModule.extra_inputs == ()
    batch = _batch()
    loss, logs = module.compute_loss(batch)
    # the same masks from the same step generator, by hand
    masks = complementary_masks(batch["superpixels"], 0.5, module.step_generator())
    lam = branch_weights(masks, "pixels")
    i_h, i_hbar = cp_pair(batch["image"], masks)
    out = module.net.forward_all(torch.cat([batch["image"], i_h, i_hbar]))
    branches = tuple({k: v[i * 2:(i + 1) * 2] for k, v in out.items()} for i in range(3))
    want, _ = cpn_loss(branches, batch["label"], lam, module.hp)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert set(logs) >= {"cls", "tcp", "tcp_raw", "tcp_refined", "cpcr", "lambda"}
    assert logs["lambda"].item() == pytest.approx(lam.mean().item())
    loss.backward()
    assert module.net.classifier.weight.grad is not None and module.net.g.weight.grad is not None
    # the superpixel strategy needs the extra input; the grid strategy does not
    with pytest.raises(RuntimeError, match="superpixels"):
        module.compute_loss({k: v for k, v in batch.items() if k != "superpixels"})
    grid = CPNModule(_cfg(**{"method.patches": "grid", "method.min_pool_weight": 1.0}), 4)
    assert grid.extra_inputs == () and grid.grid_sizes == [40, 80]
    loss, logs = grid.compute_loss({k: v for k, v in batch.items() if k != "superpixels"})
    assert torch.isfinite(loss) and "min_pool" in logs
    assert CPNModule.extra_sources(_cfg(**{"method.patches": "grid"}), None, Path("/nonexistent")) == {}
    # the frame's check asks the method what this config needs
    from wsss.config import ConfigError
    from wsss.training import check_extra_inputs

    assert CPNModule.required_extras(cfg) == ("superpixels",)
    with pytest.raises(ConfigError, match=r"needs extra training input\(s\) \['superpixels'\]"):
        check_extra_inputs(cfg, {})
    check_extra_inputs(_cfg(**{"method.patches": "grid"}), {})  # the grid needs nothing


# ---------------------------------------------------------------------------------------
# cached superpixels and the short fit on MSRC
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def msrc4(msrc_root):
    from wsss.data.voc import VOCLayout

    return VOCLayout(msrc_root, "train", limit=4, check_files=False)


def test_superpixel_source_caches_atomically_and_in_parallel(msrc4, tmp_path):
    src = SuperpixelSource(msrc4, tmp_path, SlicParams(50, 10.0), workers=2)
    assert src.missing() == list(msrc4.ids)
    stats = src.prepare()
    assert stats["computed"] == 4 and stats["workers"] == 2
    assert src.prepare()["computed"] == 0  # cached
    assert not list(src.folder.glob(".*.tmp"))  # temp files moved into place
    for i in msrc4.ids:
        lab = src.load(i)
        img = msrc4.image(i)
        assert lab.shape == img.shape[:2] and lab.dtype == np.int32 and lab.min() == 0
        assert np.array_equal(np.unique(lab), np.arange(lab.max() + 1))  # dense labels 0..n-1
        assert np.array_equal(lab, slic_labels(img, SlicParams(50, 10.0)))
    fp = src.fingerprint()
    assert fp.startswith("slic:n=50:c=10.0:sha256:") and fp == SuperpixelSource(msrc4, tmp_path / "x", SlicParams(50)).fingerprint()
    assert fp != SuperpixelSource(msrc4, tmp_path, SlicParams(60)).fingerprint()
    # a map missing from the cache is computed (and cached again) on load
    victim = msrc4.ids[0]
    src.path(victim).unlink()
    assert src.load(victim).shape == msrc4.image(victim).shape[:2] and src.path(victim).is_file()
    with pytest.raises(ValueError, match="method.n_segments"):
        SlicParams(0)


def test_superpixels_go_through_the_augmentation_with_recognisable_padding(msrc4, tmp_path):
    from wsss.data.datasets import ClassificationDataset
    from wsss.data.transforms import TrainTransform

    src = SuperpixelSource(msrc4, tmp_path, SlicParams(50), workers=1)
    ds = ClassificationDataset(msrc4, TrainTransform(crop_size=256, resize_long=(200, 200), hflip=True),
                               extras={"superpixels": src})
    item = ds[0]
    sp, valid = item["superpixels"], item["valid"]
    assert sp.dtype == torch.int64 and sp.shape == (256, 256)
    assert torch.equal(sp == PAD_LABEL, valid == 0) and (valid == 0).any()  # the long side 200 < crop 256


def test_short_fit_on_msrc_through_stage_train(msrc_root, tmp_path):
    from wsss.inference.tta import multiscale_cam
    from wsss.stages import stage_train
    from wsss.training import load_generator

    run = tmp_path / "run"
    cfg = load_config(CFG, {**TINY, "data.root": str(msrc_root), "output_dir": str(run), "method.n_segments": 50})
    stage_train(cfg)
    assert (run / "model.safetensors").is_file()
    fp = json.dumps(read_json(run / "fingerprints" / "train.json"))
    assert "slic:n=50:c=10.0" in fp  # the method-made extra input enters the run fingerprint
    cached = sorted(p.stem for p in (run / "cache" / "superpixels").glob("*/*.npy"))
    assert len(cached) == 4
    metrics = (run / "logs" / "metrics.csv").read_text()
    assert "train/tcp" in metrics and "train/cpcr" in metrics
    net = load_generator(cfg, run)
    from wsss.data.voc import VOCLayout

    layout = VOCLayout(msrc_root, "train", limit=1, check_files=False)
    hi, _ = multiscale_cam(net, layout.image(layout.ids[0]), [0], scales=(1.0,), flip=True)
    assert np.isfinite(hi).all()
