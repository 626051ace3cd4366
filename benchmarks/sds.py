"""What an SDS step costs, and where the time goes: one JSON line, every figure from this one run.

- step_seconds: one full DreamFusion step of `text3d_edu.generate` (4 cameras, 32×32, render → SDS → Adam);
- unet_forward_seconds: the guided U-Net forward on the same batch (both CFG branches, no grad);
- render_fwd_bwd_seconds: rendering the same batch and backpropagating into the grid;
- overhead_ratio = step / (U-Net forward + render fwd+bwd): 1.0 means SDS adds nothing but those two;
- jacobian_step_seconds: the same step with the U-Net Jacobian (backprop through the U-Net);
- peak_mb_sds / peak_mb_jacobian: peak resident memory (Linux VmHWM) above the baseline after loading, while
  running 3 steps of each kind, each measured in a fresh Python process so that the allocator's cache from one
  measurement does not hide the other.

    python benchmarks/sds.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch

from text3d_edu import toyworld
from text3d_edu.cameras import sample_cameras
from text3d_edu.fields import GridField
from text3d_edu.generate import GenerateConfig
from text3d_edu.guidance.sds import SDSConfig, sds_loss
from text3d_edu.priors import load_diffusion
from text3d_edu.rendering import render_image


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-of", choices=["sds", "jacobian"], help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = GenerateConfig()
    prior = load_diffusion("pocket")
    generator = torch.Generator().manual_seed(0)
    field = GridField(config.grid_resolution, init="blob")
    optimiser = torch.optim.Adam(field.parameters(), lr=config.lr)
    cameras = sample_cameras(config.cameras_per_step, generator, resolution=config.resolution)
    cond = prior.encode_prompt(["a red mug, front view"] * config.cameras_per_step)
    uncond = prior.encode_unconditional(1)

    def render():
        return render_image(field, cameras, config.n_samples, toyworld.BACKGROUND, perturb=True,
                            generator=generator)["rgb"].permute(0, 3, 1, 2)

    def render_fwd_bwd():
        field.zero_grad()
        render().sum().backward()

    x_t = torch.randn(config.cameras_per_step, *prior.model_shape)

    def unet_forward():
        with torch.no_grad():
            prior.guided_noise(x_t, 500, cond, uncond, config.sds.guidance)

    def step(jacobian: bool):
        def run():
            batch = sample_cameras(config.cameras_per_step, generator, resolution=config.resolution)
            images = render_image(field, batch, config.n_samples, toyworld.BACKGROUND, perturb=True,
                                  generator=generator)["rgb"].permute(0, 3, 1, 2)
            loss, _ = sds_loss(prior, images, cond, uncond, SDSConfig(unet_jacobian=jacobian), generator)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return run

    if args.peak_of:
        baseline = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak resident set size
        for _ in range(3):
            step(args.peak_of == "jacobian")()
        print(round(_status_mb("VmHWM") - baseline, 1))
        return

    def peak_mb(kind: str) -> float:
        command = [sys.executable, __file__, "--threads", str(args.threads), "--peak-of", kind]
        return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    unet = median_seconds(unet_forward, args.steps)
    render_time = median_seconds(render_fwd_bwd, args.steps)
    sds_step = median_seconds(step(False), args.steps)
    jacobian_step = median_seconds(step(True), args.steps)
    print(json.dumps({
        "threads": args.threads, "batch": config.cameras_per_step, "resolution": config.resolution,
        "grid_resolution": config.grid_resolution, "samples_per_ray": config.n_samples,
        "step_seconds": round(sds_step, 4), "unet_forward_seconds": round(unet, 4),
        "render_fwd_bwd_seconds": round(render_time, 4),
        "overhead_ratio": round(sds_step / (unet + render_time), 3),
        "jacobian_step_seconds": round(jacobian_step, 4),
        "jacobian_slowdown": round(jacobian_step / sds_step, 2),
        "peak_mb_sds": peak_mb("sds"), "peak_mb_jacobian": peak_mb("jacobian"),
    }))


if __name__ == "__main__":
    main()
