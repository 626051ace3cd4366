"""Cameras: look-at poses, pinhole intrinsics, ray generation, random viewpoints and view labels.

Conventions (shared by every renderer in the package):
- world: +y is up; every Pocket World object faces **+z** (its canonical front).
- a camera on a sphere around the origin is given by azimuth φ (degrees; 0 = in front of the object on +z,
  90 = on +x, the viewer's right when looking at the front; the object's own right is −x), elevation (degrees
  above the xz plane) and radius:
  eye = r·(cos(el)·sin(φ), sin(el), cos(el)·cos(φ)).
- camera-to-world matrices use the OpenGL / NeRF-synthetic convention: the camera looks down its −z axis,
  +y is up and +x is right in the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

VIEW_LABELS = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of B pinhole cameras looking at the origin.

    c2w: (B, 4, 4) camera-to-world matrices. azimuth, elevation, radius: (B,) in degrees / world units.
    """

    c2w: Tensor
    azimuth: Tensor
    elevation: Tensor
    radius: Tensor
    fov_degrees: float = 40.0
    resolution: int = 64

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> Cameras:
        index = [index] if isinstance(index, int) else index
        return Cameras(self.c2w[index], self.azimuth[index], self.elevation[index], self.radius[index],
                       self.fov_degrees, self.resolution)

    @property
    def focal(self) -> float:
        """Focal length in pixels: f = (W / 2) / tan(fov / 2)."""
        return 0.5 * self.resolution / math.tan(math.radians(self.fov_degrees) / 2)

    def intrinsics(self) -> Tensor:
        """The 3×3 intrinsic matrix K shared by the batch."""
        f, c = self.focal, self.resolution / 2
        return torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])

    def with_resolution(self, resolution: int) -> Cameras:
        """Same poses, another image size (e.g. supersampling, or Magic3D's coarse → fine stages)."""
        return Cameras(self.c2w, self.azimuth, self.elevation, self.radius, self.fov_degrees, resolution)


def look_at(eye: Tensor, target: Tensor | None = None, up: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> Tensor:
    """Camera-to-world matrices (B, 4, 4) for cameras at ``eye`` (B, 3) looking at ``target`` (3,)."""
    if eye.ndim != 2 or eye.shape[-1] != 3:
        raise ValueError(f"expected eye of shape (B, 3), got {tuple(eye.shape)}")
    target = torch.zeros(3) if target is None else target
    forward = torch.nn.functional.normalize(target - eye, dim=-1)  # the direction the camera looks (its −z)
    up_world = torch.tensor(up, dtype=eye.dtype).expand_as(eye)
    # straight above or below the target, "up" is ill-defined: fall back to the world's −z
    parallel = torch.cross(forward, up_world, dim=-1).norm(dim=-1, keepdim=True) < 1e-6
    up_world = torch.where(parallel, torch.tensor([0.0, 0.0, -1.0]).expand_as(eye), up_world)
    right = torch.nn.functional.normalize(torch.cross(forward, up_world, dim=-1), dim=-1)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, -forward, eye
    return c2w


def orbit_cameras(
    azimuth: Tensor | list[float],
    elevation: Tensor | list[float] | float = 20.0,
    radius: Tensor | list[float] | float = 3.2,
    fov_degrees: float = 40.0,
    resolution: int = 64,
) -> Cameras:
    """Cameras on a sphere around the origin from azimuth / elevation (degrees) and radius; scalars broadcast."""
    azimuth = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1)
    elevation = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1).expand_as(azimuth).clone()
    radius = torch.as_tensor(radius, dtype=torch.float32).reshape(-1).expand_as(azimuth).clone()
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    eye = radius[:, None] * torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], dim=-1)
    return Cameras(look_at(eye), azimuth, elevation, radius, fov_degrees, resolution)


def turntable_cameras(n: int, elevation: float = 20.0, radius: float = 3.2, resolution: int = 64,
                      start_azimuth: float = 0.0) -> Cameras:
    """``n`` cameras evenly spaced in azimuth, for turntables and novel-view evaluation."""
    return orbit_cameras(start_azimuth + torch.arange(n) * 360.0 / n, elevation, radius, resolution=resolution)


def sample_cameras(
    n: int,
    generator: torch.Generator | None = None,
    azimuth_range: tuple[float, float] = (-180.0, 180.0),
    elevation_range: tuple[float, float] = (-10.0, 60.0),
    radius_range: tuple[float, float] = (3.0, 3.5),
    resolution: int = 64,
    fov_degrees: float = 40.0,
) -> Cameras:
    """Random viewpoints, uniform in azimuth, elevation and radius (DreamFusion samples its cameras this way)."""
    u = torch.rand(n, 3, generator=generator)
    lo = torch.tensor([azimuth_range[0], elevation_range[0], radius_range[0]])
    hi = torch.tensor([azimuth_range[1], elevation_range[1], radius_range[1]])
    az, el, r = (lo + u * (hi - lo)).unbind(-1)
    return orbit_cameras(az, el, r, fov_degrees, resolution)


def view_label(azimuth: float, elevation: float = 0.0, overhead_above: float = 60.0) -> str:
    """DreamFusion's view-dependent prompt label: 'overhead' above ``overhead_above`` degrees of elevation,
    else 'front' for |φ| < 45°, 'back' for |φ| > 135°, 'side' in between (φ wrapped to [−180°, 180°))."""
    if elevation > overhead_above:
        return "overhead"
    phi = (float(azimuth) + 180.0) % 360.0 - 180.0
    if abs(phi) < 45.0:
        return "front"
    if abs(phi) > 135.0:
        return "back"
    return "side"


def generate_rays(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """One ray through the centre of every pixel.

    Returns origins (B, H, W, 3) and unit directions (B, H, W, 3) in world space, H = W = cameras.resolution;
    row 0 is the top of the image.
    """
    n = cameras.resolution
    pixel = torch.arange(n, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(pixel, pixel, indexing="ij")
    dirs_cam = torch.stack([(x - n / 2) / cameras.focal, -(y - n / 2) / cameras.focal, -torch.ones_like(x)], -1)
    rotation = cameras.c2w[:, :3, :3]  # (B, 3, 3)
    directions = torch.einsum("bij,hwj->bhwi", rotation, dirs_cam)
    directions = torch.nn.functional.normalize(directions, dim=-1)
    origins = cameras.c2w[:, None, None, :3, 3].expand_as(directions)
    return origins, directions
