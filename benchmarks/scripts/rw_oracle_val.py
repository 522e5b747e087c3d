"""Diagnostic: random walk on a split's CAMs with (a) GT-edge oracle boundaries, (b) the trained boundary net.

    python rw_oracle_val.py RUN oracle|net OUT_DIR [SPLIT (default val)]
"""
import sys, numpy as np, torch, torch.nn.functional as F
torch.set_num_threads(1)
from pathlib import Path
from wsss.data.voc import VOCLayout
from wsss.inference.store import load_cam, cam_path, save_cam, CamRecord
from wsss.refine.random_walk import random_walk
from wsss.evaluation.seeds import evaluate_seeds
run = Path(sys.argv[1]); mode = sys.argv[2]; out = Path(sys.argv[3]); out.mkdir(parents=True, exist_ok=True)
split = sys.argv[4] if len(sys.argv) > 4 else "val"
lay = VOCLayout("../shared/data/msrc21-voc", split)
stats=[]
for i in lay.ids:
    rec = load_cam(cam_path(run/"cams", i)); h, w = rec.size
    cams = torch.from_numpy(np.ascontiguousarray(rec.strided)).float()
    hh, ww = cams.shape[-2:]
    if len(rec.keys)==0: save_cam(cam_path(out,i), rec); continue
    if mode == "oracle":
        m = torch.from_numpy(lay.mask(i).astype(np.int64))
        e = torch.zeros(h, w)
        e[:-1] = torch.maximum(e[:-1], (m[1:]!=m[:-1]).float()); e[:, :-1] = torch.maximum(e[:, :-1], (m[:,1:]!=m[:,:-1]).float())
        b = F.max_pool2d(e[None,None], 4, 4, ceil_mode=True)[0,0][:hh,:ww]
    else:
        b = torch.load(run/"affinity"/f"{split}_boundary"/f"{i}.pt", weights_only=True)
    stats.append((b.mean().item(), b.max().item()))
    rw = random_walk(cams, b, radius=5, beta=10, steps=256)
    up = F.interpolate(rw[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :h, :w]
    top = up.max().clamp(min=1e-5)
    save_cam(cam_path(out,i), CamRecord(keys=np.asarray(rec.keys), high_res=(up/top).numpy().astype(np.float32), strided=(rw/top).numpy().astype(np.float32)))
print("boundary mean/max", np.mean(stats, 0))
r = evaluate_seeds(lay, out, 0.25, sweep=np.round(np.arange(0, 0.96, 0.02), 3), progress=False)
print(mode, "fixed0.25", round(r["miou"],1), "swept", max((s["miou"], s["threshold"]) for s in r["sweep"]) if "sweep" in r else r.keys())
base = evaluate_seeds(lay, run/"cams", 0.25, sweep=np.round(np.arange(0, 0.96, 0.02), 3), progress=False)
print("cams swept", max((s["miou"], s["threshold"]) for s in base["sweep"]))
