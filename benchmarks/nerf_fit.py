"""Classic NeRF vs a voxel-grid field: the same posed views, renderer, seed and stopping rule, in one run.

Prints one JSON line: held-out PSNR, training seconds, time to 25 dB for each field, and the speedup
(classic / fast time to 25 dB; null if the classic NeRF never reaches 25 dB within its budget).

    python benchmarks/nerf_fit.py [--caption "a red mug"] [--classic-seconds 600] [--fast-seconds 60]
"""

from __future__ import annotations

import argparse
import json

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch

from text3d_edu import nerf, toyworld, world_render
from text3d_edu.fields import GridField, NeRFField


def time_to(history: dict, target_db: float) -> float | None:
    """Training seconds at the first evaluation whose held-out PSNR reaches ``target_db``."""
    for seconds, value in zip(history["seconds"], history["psnr_heldout"]):
        if value >= target_db:
            return round(seconds, 1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caption", default="a red mug")
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--classic-seconds", type=float, default=600.0)
    parser.add_argument("--fast-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    obj = toyworld.parse_caption(args.caption)
    train = world_render.posed_views(obj, args.views, args.resolution, seed=args.seed)
    test = world_render.posed_views(obj, 8, args.resolution, seed=args.seed + 1000)
    heldout = (test["cameras"], test["rgb"])

    torch.manual_seed(args.seed)
    fast_config = nerf.FitConfig(steps=100_000, lr=0.1, tv_weight=1e-4, rays_per_step=4096, eval_every=25,
                                 seconds_budget=args.fast_seconds, seed=args.seed)
    fast = nerf.fit(GridField(64), train["cameras"], train["rgb"], fast_config, heldout, progress=False)

    torch.manual_seed(args.seed)
    classic_config = nerf.FitConfig(steps=100_000, lr=5e-3, rays_per_step=1024, eval_every=100,
                                    seconds_budget=args.classic_seconds, seed=args.seed)
    classic = nerf.fit(NeRFField(), train["cameras"], train["rgb"], classic_config, heldout, progress=False)

    t_classic, t_fast = time_to(classic, 25.0), time_to(fast, 25.0)
    print(json.dumps({
        "caption": obj.caption, "views": args.views, "resolution": args.resolution,
        "psnr_classic": round(classic["psnr_heldout"][-1], 2), "psnr_fast": round(fast["psnr_heldout"][-1], 2),
        "seconds_classic": round(classic["seconds"][-1], 1), "seconds_fast": round(fast["seconds"][-1], 1),
        "steps_classic": classic["step"][-1], "steps_fast": fast["step"][-1],
        "time_to_25db_classic": t_classic, "time_to_25db_fast": t_fast,
        "time_to_28db_fast": time_to(fast, 28.0),
        "speedup": round(t_classic / t_fast, 1) if t_classic and t_fast else None,
    }))


if __name__ == "__main__":
    main()
