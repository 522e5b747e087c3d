"""RW on val with a trained boundary net, several beta / steps values (scratch diagnostic)."""
import sys, json, numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
from wsss.config import load_config
from wsss.stages import load_boundary_net, layout_for
from wsss.refine.rw import rw_record
from wsss.inference.store import load_cam, cam_path, save_cam
from wsss.evaluation.seeds import evaluate_seeds
from wsss.data.transforms import normalization_stats
run = sys.argv[1]; settings = [tuple(float(v) for v in s.split(",")) for s in sys.argv[2:]]
cfg = load_config("configs/msrc/cam.yaml", {"output_dir": run})
net = load_boundary_net(cfg); mean, std = normalization_stats(cfg.model.normalization)
lay = layout_for(cfg, "val")
for beta, steps in settings:
    out = Path(f"/work/scratch/rwbeta/{Path(run).name}_b{beta:g}_s{steps:g}"); out.mkdir(parents=True, exist_ok=True)
    for i in lay.ids:
        if not cam_path(out, i).is_file():
            save_cam(cam_path(out, i), rw_record(net, lay.image(i), load_cam(cam_path(Path(run)/"cams", i)), beta=beta, steps=int(steps), mean=mean, std=std))
    r = evaluate_seeds(lay, out, 0.25, sweep=np.round(np.arange(0, 0.96, 0.01), 3), progress=False)
    b = max(r["sweep"], key=lambda s: s["miou"])
    print(f"beta {beta:g} steps {steps:g}: val RW mIoU {b['miou']:.1f} at thr {b['threshold']:.2f}", flush=True)
