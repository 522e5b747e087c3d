"""Peak memory and time per image of the sparse random walk vs IRN's dense form (issue 10).

Usage: .venv/bin/python benchmarks/scripts/bench_random_walk.py [--dense-max 16384] [--out benchmarks/results/random_walk.json]

For each input size (MSRC 320 x 213, 512 x 512, 1024 x 1024) the stride-4 grid gets a synthetic
boundary map (smooth blobs, values in [0, 1]) and 3 class maps; the sparse walk
(wsss.refine.random_walk.random_walk, 256 steps) and, where N <= --dense-max nodes, IRN's dense
form (float32: A^beta / column sums, squared 8 times, x @ T) run in a fresh subprocess each, so
the peak resident memory (ru_maxrss) is the walk's own. Outputs are compared (max abs diff).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, {src!r})
from wsss.refine.random_walk import random_walk, path_affinity, search_offsets
torch.set_num_threads({threads})
h, w, mode = {h}, {w}, {mode!r}
g = torch.Generator().manual_seed(0)
yy, xx = torch.meshgrid(torch.linspace(0, 6, h), torch.linspace(0, 6, w), indexing="ij")
boundary = (0.5 + 0.5 * torch.sin(yy * 1.7) * torch.cos(xx * 1.3)).clamp(0, 1) ** 4
cams = torch.rand(3, h, w, generator=g)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "sparse":
    out = random_walk(cams, boundary, radius=5, beta=10.0, steps=256)
else:
    offsets, _ = search_offsets(5)
    aff = path_affinity(boundary, 5)
    n = h * w
    a = torch.eye(n)
    idx = torch.arange(n).view(h, w)
    for k, (dy, dx) in enumerate(offsets):
        ys, ye = max(0, -dy), min(h, h - dy)
        xs, xe = max(0, -dx), min(w, w - dx)
        src = idx[ys:ye, xs:xe].reshape(-1)
        dst = idx[ys + dy:ye + dy, xs + dx:xe + dx].reshape(-1)
        v = aff[k, ys:ye, xs:xe].reshape(-1) ** 10
        a[src, dst] = v
        a[dst, src] = v
    a = a / a.sum(0, keepdim=True)
    for _ in range(8):
        a = a @ a
    out = ((cams * (1 - boundary)[None]).reshape(3, n) @ a).reshape(3, h, w)
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save({npy!r}, out.numpy())
print(json.dumps({{"seconds": sec, "peak_rss_gib": peak / 2**20, "rss_before_gib": base / 2**20}}))
"""


def run(h: int, w: int, mode: str, threads: int, tmp: Path) -> dict:
    npy = tmp / f"{mode}_{h}x{w}.npy"
    code = CHILD.format(src=str(REPO / "src"), threads=threads, h=h, w=w, mode=mode, npy=str(npy))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"npy": str(npy)}


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser()
    ap.add_argument("--dense-max", type=int, default=16384, help="largest node count the dense form is run for")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/random_walk.json"))
    args = ap.parse_args()
    tmp = Path("/tmp/wsss_rw_bench")
    tmp.mkdir(exist_ok=True)
    rows = []
    for name, (hh, ww) in {"MSRC 320x213": (213, 320), "512x512": (512, 512), "1024x1024": (1024, 1024)}.items():
        h, w = (hh + 3) // 4, (ww + 3) // 4
        row = {"input": name, "grid": f"{h}x{w}", "nodes": h * w, "sparse": run(h, w, "sparse", args.threads, tmp)}
        if h * w <= args.dense_max:
            row["dense"] = run(h, w, "dense", args.threads, tmp)
            if "npy" in row["dense"] and "npy" in row["sparse"]:
                row["max_abs_diff"] = float(np.abs(np.load(row["dense"]["npy"]) - np.load(row["sparse"]["npy"])).max())
        else:
            row["dense"] = {"skipped": f"N = {h * w} nodes: {4 * (h * w) ** 2 / 2**30:.1f} GiB per dense matrix"}
        rows.append(row)
        print(json.dumps(row))
    Path(args.out).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
