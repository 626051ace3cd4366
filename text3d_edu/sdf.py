"""Signed distance functions (SDFs) and constructive solid geometry: the building blocks of the Pocket World.

An SDF maps points p ∈ ℝ³ to the signed distance to a surface: negative inside, zero on the surface, positive
outside, and |∇f| = 1 almost everywhere. That last property is what lets a renderer *sphere trace*: from any
point, a step of length f(p) along a ray can never cross the surface (Hart, "Sphere tracing", 1996).

Every function here builds an ``SDF``: a callable taking points ``(N, 3)`` and returning distances ``(N,)``.
The primitive formulas are Inigo Quilez's well-known closed forms (https://iquilezles.org/articles/distfunctions/).
Primitives are written in their own local frame (centred at the origin, axis along +y) and placed in the world by
``center`` and an optional 3×3 ``rotation`` whose columns are the local axes expressed in world coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

SDF = Callable[[Tensor], Tensor]  # points (N, 3) -> signed distances (N,)
Vec3 = Sequence[float]


def check_points(points: Tensor) -> None:
    """Raise a ValueError naming the expected shape unless ``points`` is ``(N, 3)``."""
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"expected points of shape (N, 3), got {tuple(points.shape)}")


def rotation_x(degrees: float) -> tuple[tuple[float, ...], ...]:
    """3×3 rotation about the x axis (right-handed), as nested tuples so objects stay hashable."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return ((1.0, 0.0, 0.0), (0.0, c, -s), (0.0, s, c))


def rotation_z(degrees: float) -> tuple[tuple[float, ...], ...]:
    """3×3 rotation about the z axis (right-handed)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))


def _to_local(points: Tensor, center: Vec3, rotation) -> Tensor:
    """World points (N, 3) → the primitive's local frame (N, 3): q = Rᵀ (p − c)."""
    local = points - torch.tensor(center, dtype=points.dtype, device=points.device)
    if rotation is not None:
        local = local @ torch.tensor(rotation, dtype=points.dtype, device=points.device)
    return local


def sphere(center: Vec3, radius: float) -> SDF:
    """f(p) = |p − c| − r."""

    def f(points: Tensor) -> Tensor:
        return (points - torch.tensor(center, dtype=points.dtype)).norm(dim=-1) - radius

    return f


def ellipsoid(center: Vec3, radii: Vec3) -> SDF:
    """Ellipsoid with semi-axes ``radii`` (a bound, not exact: k₀(k₀ − 1)/k₁ with k₀ = |p/r|, k₁ = |p/r²|)."""

    def f(points: Tensor) -> Tensor:
        r = torch.tensor(radii, dtype=points.dtype)
        q = points - torch.tensor(center, dtype=points.dtype)
        k0 = (q / r).norm(dim=-1)
        k1 = (q / (r * r)).norm(dim=-1).clamp_min(1e-9)
        return k0 * (k0 - 1.0) / k1

    return f


def box(center: Vec3, half_size: Vec3, rounding: float = 0.0, rotation=None) -> SDF:
    """Box with half extents ``half_size`` and edges rounded by ``rounding`` (exact SDF)."""

    def f(points: Tensor) -> Tensor:
        q = _to_local(points, center, rotation).abs() - torch.tensor(half_size, dtype=points.dtype) + rounding
        outside = q.clamp_min(0.0).norm(dim=-1)
        inside = q.max(dim=-1).values.clamp_max(0.0)
        return outside + inside - rounding

    return f


def capped_cone(center: Vec3, half_height: float, r_bottom: float, r_top: float, rotation=None) -> SDF:
    """Frustum along the local y axis from y = −h (radius ``r_bottom``) to y = +h (radius ``r_top``); exact SDF.

    With r_bottom = r_top it is a cylinder, with r_top = 0 a cone.
    """

    def f(points: Tensor) -> Tensor:
        p = _to_local(points, center, rotation)
        qx = torch.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2)  # distance from the axis
        qy = p[:, 1]
        k1x, k1y = r_top, half_height
        k2x, k2y = r_top - r_bottom, 2.0 * half_height
        cap_radius = torch.where(qy < 0.0, torch.full_like(qy, r_bottom), torch.full_like(qy, r_top))
        ca_x = qx - torch.minimum(qx, cap_radius)
        ca_y = qy.abs() - half_height
        s = ((k1x - qx) * k2x + (k1y - qy) * k2y) / (k2x * k2x + k2y * k2y)
        s = s.clamp(0.0, 1.0)
        cb_x = qx - k1x + k2x * s
        cb_y = qy - k1y + k2y * s
        sign = torch.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0)
        dist2 = torch.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2)
        return sign * torch.sqrt(dist2)

    return f


def cylinder(center: Vec3, radius: float, half_height: float, rotation=None) -> SDF:
    """Cylinder along the local y axis (a frustum with equal radii)."""
    return capped_cone(center, half_height, radius, radius, rotation)


def torus(center: Vec3, major_radius: float, minor_radius: float, rotation=None) -> SDF:
    """Torus lying in the local xz plane: f(p) = |(|p_xz| − R, p_y)| − r."""

    def f(points: Tensor) -> Tensor:
        p = _to_local(points, center, rotation)
        ring = torch.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - major_radius
        return torch.sqrt(ring**2 + p[:, 1] ** 2) - minor_radius

    return f


def capsule(a: Vec3, b: Vec3, radius: float) -> SDF:
    """Segment a→b thickened by ``radius``."""

    def f(points: Tensor) -> Tensor:
        pa = points - torch.tensor(a, dtype=points.dtype)
        ba = torch.tensor(b, dtype=points.dtype) - torch.tensor(a, dtype=points.dtype)
        h = ((pa @ ba) / (ba @ ba)).clamp(0.0, 1.0)
        return (pa - h[:, None] * ba).norm(dim=-1) - radius

    return f


def union(*sdfs: SDF) -> SDF:
    """A ∪ B: min(f_A, f_B)."""

    def f(points: Tensor) -> Tensor:
        return torch.stack([s(points) for s in sdfs]).min(dim=0).values

    return f


def subtract(a: SDF, b: SDF) -> SDF:
    """A \\ B: max(f_A, −f_B) (a bound outside, exact where it matters for sphere tracing)."""

    def f(points: Tensor) -> Tensor:
        return torch.maximum(a(points), -b(points))

    return f


def intersect(a: SDF, b: SDF) -> SDF:
    """A ∩ B: max(f_A, f_B)."""

    def f(points: Tensor) -> Tensor:
        return torch.maximum(a(points), b(points))

    return f


def half_space(normal: Vec3, offset: float) -> SDF:
    """The region n·p ≤ offset (n a unit vector)."""

    def f(points: Tensor) -> Tensor:
        return points @ torch.tensor(normal, dtype=points.dtype) - offset

    return f


def scaled(sdf: SDF, scale: Vec3) -> SDF:
    """Stretch a shape by ``scale`` per axis: f(p / s) · min(s) stays a valid distance bound."""

    def f(points: Tensor) -> Tensor:
        s = torch.tensor(scale, dtype=points.dtype)
        return sdf(points / s) * s.min()

    return f
