"""Volume rendering: the differentiable renderer behind NeRF, Dream Fields, DreamFusion and ProlificDreamer.

Along a ray r(t) = o + t·d the colour is (Max 1995; NeRF, Mildenhall et al. 2020, eq. 1–3)

    C(r) = Σ_i T_i · α_i · c_i  +  T_{S} · c_bg,     α_i = 1 − exp(−σ_i δ_i),     T_i = Π_{j<i} (1 − α_j)

with δ_i the length of the i-th sample's segment. T_i is an *exclusive* cumulative product (light reaching
sample i has crossed samples 0..i−1, not i itself). The weights w_i = T_i α_i sum to the opacity ≤ 1, and also
give the expected depth Σ w_i t_i. A renderer takes any field with ``field(points, view_dirs) -> (σ, rgb)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from text3d_edu.cameras import Cameras, generate_rays


@dataclass
class RenderOutput:
    """rgb (..., 3) composited on the background; opacity (...,) = Σ w_i; depth (...,) = Σ w_i t_i / opacity;
    weights (..., S)."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    weights: Tensor


def ray_box_intersection(origins: Tensor, directions: Tensor, bound: float = 1.0) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (N,), (N,) of rays (N, 3) through the cube [−bound, bound]³ (slab method).

    Rays that miss get near = far, so their samples have zero length and contribute nothing.
    """
    inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (-bound - origins) * inv, (bound - origins) * inv
    near = torch.minimum(t0, t1).max(dim=-1).values.clamp_min(0.0)
    far = torch.maximum(t0, t1).min(dim=-1).values
    return near, torch.maximum(far, near)


def stratified_samples(near: Tensor, far: Tensor, n_samples: int, perturb: bool = True,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Split [near, far] (N,) into ``n_samples`` equal bins and draw one t per bin (NeRF eq. 2).

    Returns t (N, S) (bin centres when ``perturb`` is False) and δ (N, S), the bin lengths; Σ δ = far − near.
    """
    u = torch.rand(near.shape[0], n_samples, generator=generator) if perturb else torch.full((1, n_samples), 0.5)
    bins = torch.arange(n_samples, dtype=near.dtype)
    width = (far - near)[:, None] / n_samples
    t = near[:, None] + (bins + u) * width
    return t, width.expand_as(t)


def alpha_from_density(sigma: Tensor, deltas: Tensor) -> Tensor:
    """α_i = 1 − exp(−σ_i δ_i): the probability that the ray stops inside segment i. (..., S) → (..., S)."""
    return 1.0 - torch.exp(-sigma * deltas)


def transmittance(alpha: Tensor) -> Tensor:
    """T_i = Π_{j<i} (1 − α_j), an exclusive cumulative product along the last axis: (..., S) → (..., S)."""
    survive = torch.cumprod(1.0 - alpha + 1e-10, dim=-1)
    return torch.cat([torch.ones_like(survive[..., :1]), survive[..., :-1]], dim=-1)


def composite(sigma: Tensor, rgb: Tensor, t: Tensor, deltas: Tensor, background: Tensor | None = None) -> RenderOutput:
    """α-composite samples along rays.

    sigma (N, S) ≥ 0, rgb (N, S, 3), t (N, S), deltas (N, S); background (3,) or (N, 3) or None (black).
    """
    if sigma.shape != t.shape or rgb.shape != (*t.shape, 3) or deltas.shape != t.shape:
        raise ValueError(f"expected sigma, t, deltas of shape (N, S) and rgb (N, S, 3); got sigma "
                         f"{tuple(sigma.shape)}, rgb {tuple(rgb.shape)}, t {tuple(t.shape)}, "
                         f"deltas {tuple(deltas.shape)}")
    alpha = alpha_from_density(sigma, deltas)
    weights = alpha * transmittance(alpha)  # w_i = T_i α_i
    opacity = weights.sum(dim=-1)
    colour = (weights[..., None] * rgb).sum(dim=-2)
    if background is not None:
        colour = colour + (1.0 - opacity)[..., None] * background
    depth = (weights * t).sum(dim=-1) / opacity.clamp_min(1e-6)
    return RenderOutput(colour, opacity, depth, weights)


def render_rays(field, origins: Tensor, directions: Tensor, n_samples: int = 64, background: Tensor | None = None,
                perturb: bool = True, generator: torch.Generator | None = None, bound: float = 1.0) -> RenderOutput:
    """Render rays (N, 3) + unit directions (N, 3) through ``field`` inside [−bound, bound]³."""
    if origins.ndim != 2 or origins.shape[-1] != 3 or directions.shape != origins.shape:
        raise ValueError(f"expected origins and directions of shape (N, 3), got {tuple(origins.shape)} "
                         f"and {tuple(directions.shape)}")
    near, far = ray_box_intersection(origins, directions, bound)
    t, deltas = stratified_samples(near, far, n_samples, perturb, generator)
    points = origins[:, None, :] + t[..., None] * directions[:, None, :]  # (N, S, 3)
    view_dirs = directions[:, None, :].expand_as(points)
    sigma, rgb = field(points.reshape(-1, 3), view_dirs.reshape(-1, 3))
    return composite(sigma.reshape(t.shape), rgb.reshape(*t.shape, 3), t, deltas, background)


def render_image(field, cameras: Cameras, n_samples: int = 64, background: Tensor | tuple | None = None,
                 perturb: bool = False, generator: torch.Generator | None = None,
                 chunk: int = 16384) -> dict[str, Tensor]:
    """Render whole images: {"rgb": (B, H, W, 3), "opacity": (B, H, W), "depth": (B, H, W)}.

    Differentiable; rays are processed in chunks of ``chunk`` to bound memory.
    """
    origins, directions = generate_rays(cameras)
    shape = origins.shape[:-1]
    if background is not None:
        background = torch.as_tensor(background, dtype=torch.float32)
    outputs = [render_rays(field, o, d, n_samples, background, perturb, generator)
               for o, d in zip(origins.reshape(-1, 3).split(chunk), directions.reshape(-1, 3).split(chunk))]
    return {
        "rgb": torch.cat([o.rgb for o in outputs]).reshape(*shape, 3),
        "opacity": torch.cat([o.opacity for o in outputs]).reshape(shape),
        "depth": torch.cat([o.depth for o in outputs]).reshape(shape),
    }
