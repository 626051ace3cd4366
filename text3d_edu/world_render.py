"""Ground truth from the Pocket World: sphere-traced images, posed view sets, point clouds, SDF grids, meshes.

The renderer sphere traces the object's SDF (Hart 1996): from the camera, step along each ray by the distance
f(p) until f(p) ≈ 0. At the hit point it shades the part's albedo with two fixed *world-space* lights, so the
shading does not change with the viewpoint and a NeRF can reproduce it exactly (it is view-independent colour).
Supersampling (render at k× the resolution, then average k×k blocks) gives anti-aliased edges.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from text3d_edu.cameras import Cameras, generate_rays, sample_cameras
from text3d_edu.toyworld import BACKGROUND, PocketObject

KEY_LIGHT = F.normalize(torch.tensor([0.45, 0.8, 0.55]), dim=0)
FILL_LIGHT = F.normalize(torch.tensor([-0.5, 0.3, -0.6]), dim=0)
AMBIENT, KEY, FILL = 0.38, 0.52, 0.22


def _normals(obj: PocketObject, points: Tensor, eps: float = 1e-3) -> Tensor:
    """Surface normals (N, 3) = ∇f / |∇f| by central differences."""
    offsets = torch.eye(3) * eps
    grads = [obj.sdf(points + o) - obj.sdf(points - o) for o in offsets]
    return F.normalize(torch.stack(grads, dim=-1), dim=-1)


def shade(obj: PocketObject, points: Tensor, albedo: Tensor | None = None) -> Tensor:
    """Lambertian shading of surface points (N, 3) → RGB (N, 3), lit by two world-space lights; ``albedo`` (N, 3)
    when the caller already has it (``obj.albedo(points)`` otherwise)."""
    albedo = obj.albedo(points) if albedo is None else albedo
    return (albedo * lighting(_normals(obj, points))[:, None]).clamp(0, 1)


def lighting(normals: Tensor) -> Tensor:
    """The Pocket World's light falling on unit normals (N, 3) → (N,): ambient plus the key and fill lights'
    Lambertian terms max(0, n · ℓ). Every render of the world (and so every image the pocket priors learnt from)
    is lit this way; multiply an albedo by it to shade a surface as the world does."""
    return AMBIENT + KEY * (normals @ KEY_LIGHT).clamp_min(0) + FILL * (normals @ FILL_LIGHT).clamp_min(0)


def sphere_trace(obj: PocketObject, origins: Tensor, directions: Tensor, max_steps: int = 64,
                 far: float = 6.0, hit_epsilon: float = 2e-3) -> tuple[Tensor, Tensor]:
    """March rays (N, 3) + unit directions (N, 3) to the surface; returns depth t (N,) and a hit mask (N,)."""
    t = torch.zeros(origins.shape[0])
    active = torch.ones_like(t, dtype=torch.bool)
    hit = torch.zeros_like(active)
    for _ in range(max_steps):
        index = active.nonzero().squeeze(-1)
        if index.numel() == 0:
            break
        distance = obj.sdf(origins[index] + t[index, None] * directions[index])
        t[index] += 0.95 * distance  # a little under-stepping tolerates the bounds of scaled shapes
        hit[index] |= distance < hit_epsilon
        active[index] = (distance >= hit_epsilon) & (t[index] < far)
    return t, hit


@torch.no_grad()
def render(obj: PocketObject, cameras: Cameras, background=BACKGROUND, supersample: int = 2) -> dict[str, Tensor]:
    """Render an object from a batch of cameras.

    Returns ``rgb`` (B, H, W, 3) composited on ``background``, ``alpha`` (B, H, W) coverage in [0, 1],
    ``depth`` (B, H, W) distance along the ray (0 where nothing is hit) and ``albedo`` (B, H, W, 3) the unshaded
    surface colour (0 where nothing is hit), H = W = cameras.resolution.
    """
    fine = cameras.with_resolution(cameras.resolution * supersample)
    origins, directions = generate_rays(fine)
    shape = origins.shape[:-1]
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    # start the march on the bounding sphere of [−1, 1]³ so it does not waste steps in empty space
    start = ((-(origins * directions).sum(-1)) - 3**0.5).clamp_min(0)
    t, hit = sphere_trace(obj, origins + start[:, None] * directions, directions)
    t = t + start
    rgb = torch.tensor(background, dtype=torch.float32).expand(origins.shape[0], 3).clone()
    surface = origins[hit] + t[hit, None] * directions[hit]
    albedo = torch.zeros_like(rgb)
    albedo[hit] = obj.albedo(surface)
    rgb[hit] = shade(obj, surface, albedo[hit])
    alpha, depth = hit.float(), torch.where(hit, t, torch.zeros_like(t))

    def downsample(x: Tensor) -> Tensor:  # (B, kH, kW, C) → (B, H, W, C) by averaging k×k blocks
        return F.avg_pool2d(x.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)

    coverage = downsample(alpha.reshape(*shape, 1))
    depth = downsample((depth * alpha).reshape(*shape, 1)) / coverage.clamp_min(1e-6)
    albedo = downsample(albedo.reshape(*shape, 3)) / coverage.clamp_min(1e-6)
    return {"rgb": downsample(rgb.reshape(*shape, 3)), "alpha": coverage[..., 0], "depth": depth[..., 0],
            "albedo": albedo}


def posed_views(obj: PocketObject, n_views: int, resolution: int = 64, seed: int = 0,
                **camera_ranges) -> dict[str, Tensor | Cameras]:
    """A NeRF-style dataset: ``n_views`` random cameras (seeded) and their renders.

    Returns {"cameras": Cameras, "rgb": (N, H, W, 3), "alpha": (N, H, W), "depth": (N, H, W)}.
    """
    generator = torch.Generator().manual_seed(seed)
    cameras = sample_cameras(n_views, generator, resolution=resolution, **camera_ranges)
    return {"cameras": cameras, **render(obj, cameras)}


def save_views(obj: PocketObject, out_dir: str | Path, n_views: int = 16, resolution: int = 64,
               seed: int = 0) -> Path:
    """Write PNGs and a NeRF-synthetic ``transforms.json`` (camera_angle_x + a transform_matrix per frame)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = posed_views(obj, n_views, resolution, seed)
    cameras = views["cameras"]
    frames = []
    for i in range(n_views):
        name = f"view_{i:03d}.png"
        Image.fromarray((views["rgb"][i].numpy() * 255).round().astype(np.uint8)).save(out / name)
        frames.append({"file_path": name, "transform_matrix": cameras.c2w[i].tolist(),
                       "azimuth": float(cameras.azimuth[i]), "elevation": float(cameras.elevation[i])})
    meta = {"caption": obj.caption, "camera_angle_x": float(np.radians(cameras.fov_degrees)), "frames": frames}
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    return out


def sdf_grid(obj: PocketObject, resolution: int = 64, bound: float = 1.0) -> Tensor:
    """The SDF sampled on a regular grid over [−bound, bound]³: (R, R, R), indexed [x, y, z]."""
    axis = torch.linspace(-bound, bound, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    return torch.cat([obj.sdf(chunk) for chunk in points.split(65536)]).reshape(resolution, resolution, resolution)


def surface_points(obj: PocketObject, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` coloured points on the surface (Point-E's representation): xyz (n, 3) and shaded RGB (n, 3).

    Points are drawn in the bounding cube, kept near the surface, and projected onto it by Newton steps
    p ← p − f(p)·∇f(p).
    """
    generator = torch.Generator().manual_seed(seed)
    kept: list[Tensor] = []
    while sum(k.shape[0] for k in kept) < n:
        candidates = torch.rand(8 * n, 3, generator=generator) * 2 - 1
        kept.append(candidates[obj.sdf(candidates).abs() < 0.08])
    points = torch.cat(kept)[:n]
    for _ in range(4):
        points = points - obj.sdf(points)[:, None] * _normals(obj, points)
    return points, shade(obj, points)


def mesh(obj: PocketObject, resolution: int = 64):
    """The object's surface as a ``trimesh.Trimesh`` with shaded vertex colours (marching cubes of its SDF)."""
    from text3d_edu.mesh import marching_cubes_mesh

    return marching_cubes_mesh(sdf_grid(obj, resolution).numpy(), level=0.0, inside_is_below=True,
                               colour_fn=lambda pts: shade(obj, pts))
