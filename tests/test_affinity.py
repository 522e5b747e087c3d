"""IRN pair labels and loss on hand-made label maps (train_irn.py, resnet50_irn.py)."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.affinity.model import BoundaryNet, affinity_loss, pair_labels
from wsss.backbones import Backbone
from wsss.refine.random_walk import search_offsets


def test_pair_labels_on_a_tiny_map():
    # 1 x 3 map: [0, 2, 255] with radius 2 -> offsets (0,1), (1,-1), (1,0), (1,1)
    offsets, _ = search_offsets(2)
    assert offsets == ((0, 1), (1, -1), (1, 0), (1, 1))
    lab = torch.tensor([[[0, 2, 255], [0, 0, 2]]])
    bg, fg, neg = pair_labels(lab, 2)
    k01, k10, k11, k1m1 = offsets.index((0, 1)), offsets.index((1, 0)), offsets.index((1, 1)), offsets.index((1, -1))
    # (0,0)-(0,1): 0 vs 2 -> negative
    assert neg[0, k01, 0, 0] == 1 and bg[0, k01, 0, 0] == 0
    # (0,1)-(0,2): 2 vs 255 -> ignored
    assert neg[0, k01, 0, 1] == 0 and fg[0, k01, 0, 1] == 0
    # (0,0)-(1,0): 0 vs 0 -> positive background
    assert bg[0, k10, 0, 0] == 1
    # (0,1)-(1,2): 2 vs 2 -> positive foreground
    assert fg[0, k11, 0, 1] == 1
    # (0,1)-(1,0): 2 vs 0 -> negative
    assert neg[0, k1m1, 0, 1] == 1
    # bottom row has no partner below: all zero
    assert (bg[0, k10, 1] + fg[0, k10, 1] + neg[0, k10, 1]).sum() == 0
    # totals, counted by hand over all in-image pairs with both ends < 255
    assert int(bg.sum()) == 3  # (0,0)-(1,0), (0,0)-(1,1), (1,0)-(1,1)
    assert int(fg.sum()) == 1  # (0,1)-(1,2)
    assert int(neg.sum()) == 4  # (0,0)-(0,1), (0,1)-(1,0), (0,1)-(1,1), (1,1)-(1,2)
    # and by brute force
    pairs = []
    h, w = 2, 3
    for y in range(h):
        for x in range(w):
            for dy, dx in offsets:
                ty, tx = y + dy, x + dx
                if 0 <= ty < h and 0 <= tx < w:
                    a, b = int(lab[0, y, x]), int(lab[0, ty, tx])
                    if a < 255 and b < 255:
                        pairs.append("bg" if a == b == 0 else "fg" if a == b else "neg")
    assert pairs.count("bg") == int(bg.sum()) and pairs.count("fg") == int(fg.sum()) and pairs.count("neg") == int(neg.sum())


def test_affinity_loss_hand_computed():
    # 1 x 2 map, radius 2: the only in-image pair is (0,0)-(0,1) (offset (0,1)).
    b = torch.tensor([[[0.2, 0.5]]])
    # pair path = both pixels: aff = 1 - 0.5 = 0.5
    lab_pos = torch.tensor([[[1, 1]]])
    loss, parts = affinity_loss(b, lab_pos, radius=2)
    fg = -math.log(0.5 + 1e-5)
    assert float(loss) == pytest.approx((0 / 2 + fg * 1 / (1 + 1e-5) / 2 + 0) / 2, rel=1e-5)
    lab_neg = torch.tensor([[[0, 1]]])
    loss, parts = affinity_loss(b, lab_neg, radius=2)
    neg = -math.log(1 + 1e-5 - 0.5)
    assert float(loss) == pytest.approx(neg / (1 + 1e-5) / 2, rel=1e-5)
    assert float(parts["n_neg"]) == 1 and float(parts["n_fg_pos"]) == 0
    # gradient pushes the boundary up for a negative pair, down for a positive one
    bb = b.clone().requires_grad_(True)
    affinity_loss(bb, lab_neg, radius=2)[0].backward()
    assert float(bb.grad[0, 0, 1]) < 0  # raising the max boundary lowers the loss
    bb = b.clone().requires_grad_(True)
    affinity_loss(bb, lab_pos, radius=2)[0].backward()
    assert float(bb.grad[0, 0, 1]) > 0


def test_boundary_net_shapes_frozen_backbone_and_flip():
    torch.manual_seed(0)
    net = BoundaryNet(Backbone("efficientnet_lite0", 16, "none"))
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert len(net.head_parameters()) == 5 * 3 + 2  # 5 x (conv, GN weight, GN bias) + fuse w, b
    x = torch.randn(2, 3, 64, 90)
    net.train()
    assert not net.backbone.training  # IRN keeps the backbone in eval mode
    logits = net(x)
    assert logits.shape == (2, 16, 23)
    logits.sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    net.eval()
    b = net.boundary(x)
    assert b.shape == (2, 16, 23) and float(b.min()) >= 0 and float(b.max()) <= 1
    # flip equivariance of the averaged boundary
    bf = net.boundary(x.flip(-1))
    assert torch.allclose(bf.flip(-1), b, atol=1e-5)


def test_stride4_labels_nearest_and_padding():
    from wsss.affinity.module import stride4_labels

    lab = torch.arange(64).view(1, 8, 8)
    out = stride4_labels(lab, (2, 3))
    assert out.tolist() == [[[0, 4, 255], [32, 36, 255]]]


def test_boundary_module_one_step_lowers_the_loss():
    from types import SimpleNamespace

    from wsss.affinity.module import BoundaryModule

    torch.manual_seed(0)
    m = BoundaryModule(pretrained="none", radius=3, lr=0.05, momentum=0.0)
    m._trainer = SimpleNamespace(estimated_stepping_batches=10)
    opt = m.configure_optimizers()["optimizer"]
    x = torch.randn(2, 3, 32, 32)
    lab = torch.zeros(2, 32, 32, dtype=torch.long)
    lab[:, :, 16:] = 1  # two regions: negatives across the middle, positives inside
    m.log = lambda *a, **k: None  # no trainer attached
    losses = []
    for _ in range(5):
        loss = m.training_step({"image": x, "affinity_label": lab}, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_pair_counts_and_f1_hand_computed():
    from wsss.affinity.model import pair_counts, pair_f1

    # radius 2 on a 1 x 5 map: only horizontal neighbours (0, 1) pair up
    gt = torch.tensor([[[1, 1, 0, 0, 255]]])
    labels = torch.tensor([[[1, 1, 0, 255, 0]]])
    c = pair_counts(labels, gt, radius=2)
    # (0,1): labelled fg-positive, truly positive; (1,2): labelled negative, truly negative;
    # (2,3): unsure label, truly positive (a missed positive); (3,4): void in gt -> not scored
    assert c == {"tp_pos": 1, "n_pos_pred": 1, "n_pos_true": 2, "tp_neg": 1, "n_neg_pred": 1, "n_neg_true": 1}
    f = pair_f1(c)
    assert f["f1_pos"] == pytest.approx(200 / 3) and f["f1_neg"] == pytest.approx(100.0)
    assert f["f1"] == pytest.approx((200 / 3 + 100) / 2)
    assert f["precision_pos"] == pytest.approx(100.0) and f["recall_pos"] == pytest.approx(50.0)
    # a wrong negative: labels say 1 | 0 where the truth is one object
    c2 = pair_counts(torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]), radius=2)
    assert c2 == {"tp_pos": 0, "n_pos_pred": 0, "n_pos_true": 1, "tp_neg": 0, "n_neg_pred": 1, "n_neg_true": 0}
    assert pair_f1(c2)["f1"] == 0.0
    with pytest.raises(ValueError, match="shapes"):
        pair_counts(labels, gt[..., :4], radius=2)


def test_unsure_band_hand_computed():
    from wsss.affinity.model import unsure_band

    row = torch.tensor([[1, 1, 1, 2, 2, 2, 2]])
    assert torch.equal(unsure_band(row, 0), row)
    # width 1: the two pixels that touch the change; width 2: one more on each side
    assert unsure_band(row, 1).tolist() == [[1, 1, 255, 255, 2, 2, 2]]
    assert unsure_band(row, 2).tolist() == [[1, 255, 255, 255, 255, 2, 2]]
    # a 2-D corner: width 1 marks the pixels with a 4-neighbour across the change (not the
    # diagonal one); width 2 adds their 8-neighbours (Chebyshev distance)
    m = torch.zeros(4, 4, dtype=torch.int64)
    m[2:, 2:] = 3
    b1, b2 = unsure_band(m, 1), unsure_band(m, 2)
    assert b1[1, 1] == 0 and b1[2, 2] == 255 and b1[1, 2] == 255 and b1[2, 1] == 255 and b1[0, 2] == 0 and b1[3, 3] == 3
    assert b2[1, 1] == 255 and b2[0, 1] == 255 and b2[3, 0] == 255 and b2[0, 0] == 0 and b2[3, 3] == 255
    assert int((b1 == 255).sum()) == 7 and int((b2 == 255).sum()) == 15
    with pytest.raises(ValueError, match="width"):
        unsure_band(row, -1)
    with pytest.raises(ValueError, match="H, W"):
        unsure_band(row[None], 1)
