"""Path affinity and the sparse random walk (IRN Sec. 3.3; jiwoon-ahn/irn misc/indexing.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.refine.random_walk import (
    dense_affinity,
    dense_random_walk,
    path_affinity,
    random_walk,
    rw_to_mask,
    search_offsets,
    transition_csr,
)


def test_neighbourhood_of_radius_5_has_69_entries_per_row():
    offsets, paths = search_offsets(5)
    assert len(offsets) == 34  # 4 + 9 + 9 + 7 + 5 (IRN PathIndex, radius 5)
    assert (0, 1) in offsets and (4, -2) in offsets and (0, -1) not in offsets and (4, 3) not in offsets
    # every path starts at the source, ends at the destination
    for (dy, dx), p in zip(offsets, paths):
        assert (0, 0) in p and (dy, dx) in p
    # straight paths are the pixels in between; for the knight's move (1, 2) the rule
    # (x - 2y)^2 / 5 < 1 keeps all six points of the 2 x 3 box (|x - 2y| <= 2 < sqrt(5))
    assert sorted(paths[offsets.index((0, 3))]) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert sorted(paths[offsets.index((1, 2))]) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # (2, 1): (2x - y)^2 / 5 < 1 -> |2x - y| <= 2: all six points of the 3 x 2 box
    assert sorted(paths[offsets.index((2, 1))]) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    a, _ = transition_csr(torch.ones(34, 12, 12), 5)
    row_nnz = a.crow_indices().diff()
    assert int(row_nnz.max()) == 69  # interior pixels: 68 neighbours + itself
    with pytest.raises(ValueError):
        search_offsets(1)


def test_path_affinity_on_a_hand_drawn_boundary():
    # a vertical wall of boundary 0.9 at column 2 of a 4 x 5 map, 0.1 elsewhere
    b = torch.full((4, 5), 0.1)
    b[:, 2] = 0.9
    aff = path_affinity(b, 3)
    offsets, _ = search_offsets(3)
    k = offsets.index((0, 1))
    assert float(aff[k, 0, 0]) == pytest.approx(0.9)  # (0,0)-(0,1): both 0.1
    assert float(aff[k, 0, 1]) == pytest.approx(0.1)  # (0,1)-(0,2) touches the wall
    k2 = offsets.index((0, 2))
    assert float(aff[k2, 1, 1]) == pytest.approx(0.1)  # crosses the wall
    assert float(aff[k2, 1, 3]) == 0.0  # partner (1, 5) is outside: padded boundary 1
    k3 = offsets.index((1, 0))
    assert float(aff[k3, 3, 0]) == 0.0  # partner below the last row
    assert float(aff[k3, 0, 0]) == pytest.approx(0.9)


def test_transition_matrix_is_symmetric_with_row_sums_d():
    torch.manual_seed(0)
    b = torch.rand(6, 7)
    a, d = transition_csr(path_affinity(b, 3), 3, beta=2.0)
    dense = a.to_dense()
    assert torch.allclose(dense, dense.t())
    assert torch.allclose(dense.sum(1), d, atol=1e-5)
    assert torch.all(torch.diagonal(dense) == 1.0)
    ref = dense_affinity(b, 3, beta=2.0).float()
    assert torch.allclose(dense, ref, atol=1e-6)
    t = dense / dense.sum(0, keepdim=True)  # IRN's column-normalised transition
    assert torch.allclose(t.sum(0), torch.ones(42), atol=1e-6)


@pytest.mark.parametrize("radius, beta", [(3, 10.0), (5, 10.0), (4, 2.0)])
def test_sparse_walk_equals_irn_dense_walk(radius, beta):
    torch.manual_seed(radius)
    b = torch.rand(9, 11) ** 3
    cams = torch.rand(2, 9, 11)
    sparse = random_walk(cams, b, radius=radius, beta=beta, steps=256)
    dense = dense_random_walk(cams, b, radius=radius, beta=beta, exp_times=8)
    assert float(dense.abs().max()) > 0.1
    assert torch.allclose(sparse, dense, atol=1e-5)  # issue 10 asks for 1e-4; float64 accumulation gives 1e-6


def test_walk_does_not_cross_a_closed_boundary():
    b = torch.zeros(10, 10)
    b[:, 5] = 1.0  # a full wall: affinity 0 across it
    cams = torch.zeros(1, 10, 10)
    cams[0, 4, 1] = 1.0
    rw = random_walk(cams, b, radius=5, steps=64)
    assert float(rw[0, :, 6:].abs().max()) == 0.0
    assert float(rw[0, :, :5].min()) > 0.0  # spread over the whole left side
    # non-negative, finite scores (A^beta >= 0, column sums >= 1)
    assert torch.isfinite(rw).all() and float(rw.min()) >= 0.0


def test_rw_to_mask_threshold_and_keys():
    rw = torch.zeros(2, 2, 3)
    rw[0, 0, 0] = 4.0  # class key 3, global max
    rw[1, 1, 2] = 1.0  # class key 7: 0.25 after division -> ties bg at 0.25 -> bg wins (first)
    rw[1, 0, 2] = 2.0  # 0.5 > 0.25 -> class 7
    mask = rw_to_mask(rw, np.array([3, 7]), (5, 10), bg_threshold=0.25)
    assert mask.shape == (5, 10) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 3, 7}
    assert mask[0, 0] == 3
    assert (mask == 7).any()
    assert rw_to_mask(torch.zeros(0, 2, 3), np.array([], int), (5, 10)).max() == 0


def test_rw_record_on_a_real_msrc_image(msrc_root):
    """End to end on one real photograph: CAM record in, RW record out, same contract."""
    from wsss.affinity.model import BoundaryNet
    from wsss.backbones import Backbone
    from wsss.data.voc import VOCLayout
    from wsss.evaluation.seeds import cam_to_seed
    from wsss.inference.store import CamRecord
    from wsss.refine.rw import rw_record

    layout = VOCLayout(msrc_root, "val", limit=1, check_files=False)
    image = layout.image(layout.ids[0])
    h, w = image.shape[:2]
    h4, w4 = (h + 3) // 4, (w + 3) // 4
    torch.manual_seed(0)
    strided = torch.rand(2, h4, w4).numpy()
    high = torch.nn.functional.interpolate(torch.from_numpy(strided)[None], size=(h, w), mode="bilinear")[0].numpy()
    rec = CamRecord(keys=np.array([3, 5]), high_res=high, strided=strided)
    net = BoundaryNet(Backbone("efficientnet_lite0", 16, "none")).eval()
    out = rw_record(net, image, rec, steps=8)
    assert out.high_res.shape == (2, h, w) and out.strided.shape == (2, h4, w4)
    assert float(out.high_res.max()) == pytest.approx(1.0, abs=1e-4) and float(out.high_res.min()) >= 0
    seed = cam_to_seed(out, 0.25)
    assert seed.shape == (h, w) and set(np.unique(seed)) <= {0, 3, 5}
    with pytest.raises(ValueError, match="differs"):
        rw_record(net, image[:-4], rec, steps=1)
