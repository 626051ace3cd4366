"""Fitting a radiance field to posed images: the NeRF optimisation loop of lecture 01.

The loop is exactly the slide's three steps (Mildenhall et al., ECCV 2020, §5.3):
  1. render rays from known cameras through the field (``rendering.render_rays``),
  2. compare with the ground-truth pixels: L = ‖Ĉ(r) − C(r)‖²,
  3. take a gradient step on the field's parameters θ.
Each step draws a random batch of rays from all training images. Held-out views measure PSNR = −10·log₁₀(MSE).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from text3d_edu.cameras import Cameras, generate_rays
from text3d_edu.fields import GridField, NeRFField
from text3d_edu.rendering import render_image, render_rays
from text3d_edu.toyworld import BACKGROUND


@dataclass
class FitConfig:
    """Options of ``fit``. An unknown option is a TypeError, so typos fail loudly."""

    steps: int = 1000
    rays_per_step: int = 2048
    n_samples: int = 64
    lr: float = 5e-3
    tv_weight: float = 0.0  # total-variation smoothness, for fields that have ``total_variation()``
    eval_every: int = 100
    seconds_budget: float | None = None  # stop early after this much training time
    upsample_at: dict[int, int] = field(default_factory=dict)  # step → new grid resolution (coarse-to-fine)
    seed: int = 0


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: −10·log₁₀(MSE)."""
    mse = torch.mean((prediction - target) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _optimiser(field_: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(field_.parameters(), lr=lr)


def fit(field_: torch.nn.Module, cameras: Cameras, images: torch.Tensor, config: FitConfig | None = None,
        heldout: tuple[Cameras, torch.Tensor] | None = None, background=BACKGROUND,
        progress: bool = True) -> dict[str, list[float]]:
    """Fit ``field_`` to ``images`` (N, H, W, 3) seen from ``cameras`` (N views).

    Returns the history {"step", "seconds", "loss", "psnr_heldout"} recorded every ``config.eval_every`` steps
    (``seconds`` counts training time only, not the evaluations). Raises FloatingPointError on a NaN loss.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] != len(cameras):
        raise ValueError(f"expected images of shape (N, H, W, 3) with N = {len(cameras)} cameras, "
                         f"got {tuple(images.shape)}")
    config = config or FitConfig()
    generator = torch.Generator().manual_seed(config.seed)
    origins, directions = (x.reshape(-1, 3) for x in generate_rays(cameras))
    targets = images.reshape(-1, 3)
    background = torch.tensor(background)
    optimiser = _optimiser(field_, config.lr)
    history: dict[str, list[float]] = {"step": [], "seconds": [], "loss": [], "psnr_heldout": []}
    seconds = 0.0
    bar = tqdm(range(1, config.steps + 1), disable=not progress, desc="fitting")
    for step in bar:
        start = time.perf_counter()
        if step in config.upsample_at:
            field_.upsample(config.upsample_at[step])
            optimiser = _optimiser(field_, config.lr)
        batch = torch.randint(0, targets.shape[0], (config.rays_per_step,), generator=generator)
        out = render_rays(field_, origins[batch], directions[batch], config.n_samples, background,
                          perturb=True, generator=generator)
        loss = torch.mean((out.rgb - targets[batch]) ** 2)
        if config.tv_weight:
            loss = loss + config.tv_weight * field_.total_variation()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower the learning rate "
                                     f"(now {config.lr}) or check the inputs")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        seconds += time.perf_counter() - start
        out_of_time = config.seconds_budget is not None and seconds >= config.seconds_budget
        if step % config.eval_every == 0 or step == config.steps or out_of_time:
            history["step"].append(step)
            history["seconds"].append(seconds)
            history["loss"].append(loss.item())
            if heldout is not None:
                history["psnr_heldout"].append(evaluate(field_, *heldout, config.n_samples, background))
                bar.set_postfix(psnr=f"{history['psnr_heldout'][-1]:.1f} dB")
        if out_of_time:
            break
    return history


@torch.no_grad()
def evaluate(field_: torch.nn.Module, cameras: Cameras, images: torch.Tensor, n_samples: int = 64,
             background=BACKGROUND) -> float:
    """Mean PSNR (dB) of the field's renders against ``images`` (N, H, W, 3)."""
    rendered = render_image(field_, cameras, n_samples, torch.as_tensor(background))["rgb"]
    return sum(psnr(r, i) for r, i in zip(rendered, images)) / len(images)


FIELD_DEFAULTS = {
    "grid": (lambda: GridField(64), FitConfig(steps=600, lr=0.1, tv_weight=1e-4, rays_per_step=4096)),
    "classic": (lambda: NeRFField(), FitConfig(steps=2000, lr=5e-3, rays_per_step=1024)),
}


def fit_from_caption(caption: str, out_dir: str | Path, field_kind: str = "grid", n_views: int = 24,
                     resolution: int = 64, steps: int | None = None, seed: int = 0) -> dict:
    """Render ``n_views`` posed views of a Pocket World object, fit a field, and save a report + a mesh.

    Writes ``metrics.json``, ``views.png`` (ground truth vs render on held-out views) and ``mesh.glb``.
    """
    from text3d_edu import mesh, toyworld, viz, world_render

    if field_kind not in FIELD_DEFAULTS:
        raise ValueError(f"unknown field {field_kind!r}: use one of {', '.join(FIELD_DEFAULTS)}")
    if steps is not None and steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    torch.manual_seed(seed)
    obj = toyworld.parse_caption(caption)
    train = world_render.posed_views(obj, n_views, resolution, seed=seed)
    test = world_render.posed_views(obj, 8, resolution, seed=seed + 1000)
    make_field, config = FIELD_DEFAULTS[field_kind]
    config = FitConfig(**{**asdict(config), "seed": seed, **({"steps": steps} if steps else {})})
    field_ = make_field()
    history = fit(field_, train["cameras"], train["rgb"], config, heldout=(test["cameras"], test["rgb"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rendered = render_image(field_, test["cameras"], background=BACKGROUND)["rgb"]
    viz.image_grid(torch.cat([test["rgb"], rendered]), ncols=8, path=out / "views.png")
    mesh.export(mesh.field_to_mesh(field_), out / "mesh.glb")
    result = {"caption": obj.caption, "field": field_kind, "steps": history["step"][-1],
              "seconds": history["seconds"][-1], "psnr_heldout": history["psnr_heldout"][-1]}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result
