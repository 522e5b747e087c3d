"""Probe: per-class batch-mean logits of a CAM run in eval-mode vs batch-statistics BatchNorm (ablation-cam.md)."""
import torch, numpy as np
torch.set_num_threads(1)
from wsss.config import load_config
from wsss.training import load_generator
from wsss.stages import layout_for
from wsss.data.transforms import normalize, normalization_stats
cfg = load_config("configs/msrc/cam.yaml", {"output_dir": "runs/msrc/abl/step_init_layer"})
net = load_generator(cfg)
lay = layout_for(cfg, "train"); mean, std = normalization_stats("imagenet")
ids = lay.ids[:16:2]
x = torch.stack([torch.nn.functional.interpolate(normalize(lay.image(i), mean, std)[None], size=(224,320), mode="bilinear")[0] for i in ids])
y = torch.stack([torch.from_numpy(lay.label(i)) for i in ids]).float()
with torch.no_grad():
    net.eval(); le, _ = net(x)
    net.train(); net.backbone.train() if hasattr(net,'backbone') else None; lt, _ = net(x)
f = torch.nn.functional.multilabel_soft_margin_loss
print("eval-mode BN: loss %.3f, logit mean over batch per class (first 6):" % f(le, y), le.mean(0)[:6].numpy().round(2))
print("batch-stat BN: loss %.3f, logit mean over batch per class (first 6):" % f(lt, y), lt.mean(0)[:6].numpy().round(2))
print("positives' mean logit (batch-stat) %.2f, negatives' %.2f" % (lt[y>0].mean(), lt[y==0].mean()))
