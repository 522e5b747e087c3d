import numpy as np, torch
torch.set_num_threads(1)
from PIL import Image
from wsss.config import load_config
from wsss.stages import load_boundary_net, layout_for
from wsss.data.transforms import normalization_stats, normalize
from wsss.inference.store import load_cam, cam_path
cfg = load_config("configs/msrc/cam.yaml", {"output_dir": "/work/scratch/rwA"})
net = load_boundary_net(cfg); mean, std = normalization_stats(cfg.model.normalization)
lay = layout_for(cfg, "val")
rows = []
for i in lay.ids[::15][:6]:
    img = lay.image(i); h, w = img.shape[:2]
    b = net.boundary(normalize(img, mean, std)[None])[0].numpy()
    bu = np.array(Image.fromarray((b*255).astype(np.uint8)).resize((w, h), Image.NEAREST))
    m = lay.mask(i); e = np.zeros((h,w), np.uint8)
    e[:-1] |= (m[1:]!=m[:-1]); e[:, :-1] |= (m[:,1:]!=m[:,:-1])
    cam = load_cam(cam_path("/work/main/runs/msrc/abl/step_init_layer/cams", i)).high_res.max(0) if len(load_cam(cam_path("/work/main/runs/msrc/abl/step_init_layer/cams", i)).keys) else np.zeros((h,w))
    rw = load_cam(cam_path("/work/scratch/rwbeta/rwA_b10_s256", i)); rwm = rw.high_res.max(0) if len(rw.keys) else np.zeros((h,w))
    g = lambda a: np.stack([a]*3, -1)
    rows.append(np.concatenate([img, g(e*255), g(bu), g((cam*255).astype(np.uint8)), g((rwm*255).astype(np.uint8))], 1))
    print(i, "boundary mean %.3f max %.3f; on GT edges (dilated) mean %.3f" % (b.mean(), b.max(), bu[np.maximum.reduce([e, np.roll(e,1,0), np.roll(e,1,1)])>0].mean()/255))
W = max(r.shape[1] for r in rows)
Image.fromarray(np.concatenate([np.pad(r, ((0,0),(0,W-r.shape[1]),(0,0))) for r in rows], 0)).save("/work/scratch/viz.png")
