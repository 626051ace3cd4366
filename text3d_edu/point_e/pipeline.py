"""Point-E's pipeline: text → a synthetic view → a coarse cloud → a fine cloud → a solid object.

1. **Synthetic view**: the text-to-image prior draws one image of the prompt (Point-E: a fine-tuned GLIDE at
   64×64 then 256×256; here the pocket diffusion prior at 32×32, its ordinary ω = 5);
2. **base cloud**: the base denoiser samples K points conditioned on the view's CLIP image features f_I;
3. **fine cloud**: the upsampler samples K' more conditioned on f_I and the base cloud; the object's cloud is both;
4. **a solid** (``cloud_to_field``): Point-E fits an SDF regressor to the cloud and runs marching cubes. We keep it
   to what a student can read in a minute: the voxels within ``radius`` of a point form a shell; the voxels the
   shell encloses (not reachable from the grid's border without crossing it) are filled; the solid is then
   eroded by ``radius`` (the shell's outer half lies outside the object), and the voxels within ``keep`` of a
   point are kept (thin parts, a table's legs, have no inside to survive the erosion); colour is that of the
   nearest point. The result is a ``GridField``, so every other method's judge, views, turntable and mesh apply.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from text3d_edu.fields import GridField
from text3d_edu.point_e.diffusion import from_model, sample
from text3d_edu.point_e.model import PointDenoiser

SOLID_DENSITY, EMPTY_DENSITY = 50.0, 0.01  # σ inside and outside the solid (GridField's log-density grid)


@dataclass
class PointEConfig:
    """The pipeline's options: the image prior's ω and steps, the cloud models' guidance s and DDIM steps, and the
    solid's grid."""

    image_guidance: float = 5.0  # ω of the pocket image prior: its ordinary sampling ω
    image_steps: int = 50
    guidance: float = 3.0  # s of both cloud models (Point-E's 3.0)
    steps: int = 64  # DDIM steps of each cloud model
    grid_resolution: int = 32
    # the solid (``cloud_to_field``), world units ([−1, 1]³); measured on true 512-point clouds of 5 objects (mug,
    # table, house, chair, stool): silhouette IoU 0.81 with the truth (radius 0.13: 0.74, and 0.52 without keep)
    radius: float = 0.2
    keep: float = 0.05


def cloud_to_field(xyz: Tensor, rgb: Tensor, resolution: int = 32, radius: float = 0.2, keep: float = 0.05
                   ) -> GridField:
    """A solid ``GridField`` from a cloud xyz (N, 3) in [−1, 1]³ with colours rgb (N, 3) in [0, 1]."""
    from scipy.ndimage import binary_erosion, binary_fill_holes

    axis = torch.linspace(-1, 1, resolution)
    voxels = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)  # (R³, 3)
    distance, nearest = torch.cdist(voxels, xyz).min(dim=1)  # (R³,) to the nearest point, and which point
    shell = (distance <= radius).reshape(resolution, resolution, resolution)
    solid = binary_fill_holes(shell.numpy())  # the shell and what it encloses
    layers = round(radius / (2 / (resolution - 1)))  # the shell's outer half, in voxels
    near = (distance <= keep).reshape(shell.shape).numpy()  # the voxels the cloud itself touches
    solid = torch.from_numpy(binary_erosion(solid, iterations=layers) | near) if layers else torch.from_numpy(solid)
    field_ = GridField(resolution)
    with torch.no_grad():
        log_sigma = torch.where(solid, math.log(SOLID_DENSITY), math.log(EMPTY_DENSITY))
        field_.log_sigma.copy_(log_sigma[None, None])
        colour = rgb[nearest].clamp(0.02, 0.98).reshape(resolution, resolution, resolution, 3)
        field_.colour_logits.copy_(torch.logit(colour).permute(3, 0, 1, 2)[None])
    return field_


@torch.no_grad()
def text_to_cloud(prompt: str, base: PointDenoiser, upsampler: PointDenoiser, prior, clip, seed: int = 0,
                  config: PointEConfig | None = None) -> dict:
    """The pipeline's three stages for ``prompt``: {"image": (3, 32, 32) the synthetic view, "coarse": (K, 6) and
    "cloud": (K + K', 6) in the model's units, "xyz" / "rgb": the cloud's (K + K', 3) each, "seconds": per stage}."""
    config = config or PointEConfig()
    generator = torch.Generator().manual_seed(seed)
    seconds = {}
    tick = time.perf_counter()
    image = prior.sample([prompt], n=1, guidance=config.image_guidance, steps=config.image_steps,
                         generator=generator)  # (1, 3, 32, 32)
    seconds["image"] = time.perf_counter() - tick
    features = clip.encode_image(image)  # f_I: (1, E)
    tick = time.perf_counter()
    coarse = sample(base, features, generator, config.guidance, config.steps)  # (1, K, 6)
    seconds["base"] = time.perf_counter() - tick
    tick = time.perf_counter()
    fine = sample(upsampler, features, generator, config.guidance, config.steps, coarse=coarse)  # (1, K', 6)
    seconds["upsampler"] = time.perf_counter() - tick
    cloud = torch.cat([coarse, fine], dim=1)[0]  # the base points keep their places: (K + K', 6)
    xyz, rgb = from_model(cloud)
    return {"image": image[0], "coarse": coarse[0], "cloud": cloud, "xyz": xyz, "rgb": rgb,
            "seconds": {k: round(v, 2) for k, v in seconds.items()}}
