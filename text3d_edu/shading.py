"""Shading augmentation: how DreamFusion gets geometry, not just paint, out of a 2D prior.

A field whose colour is free can satisfy a 2D prior by *painting*: a blob coloured like a table from every
camera, or density coloured like the background where the object should end. DreamFusion (Poole et al. 2022,
§3.1 "Shading") renders the field lit by a random point light instead, from the surface normal
n = −∇_x σ / ‖∇_x σ‖ (its eq. in §3.1):

    c = ρ ∘ (ℓ_ρ ∘ max(0, n · (ℓ − μ) / ‖ℓ − μ‖) + ℓ_a)

with ρ the albedo, μ the point, ℓ the light position, ℓ_ρ its colour and ℓ_a the ambient light; and sometimes
"textureless" (ρ = white), where only the shape can make the image look like the prompt. Paint cannot fake
shading that moves with the light, so the prior's gradient has to shape the density.

``ShadedField`` wraps any field with a ``normals(points)`` method and returns shaded colours, so the renderer and
the guidance are untouched. ``sample_shading`` draws the mode and the light per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SHADING_MODES = ("albedo", "lambertian", "textureless")


class ShadedField(nn.Module):
    """``field`` lit by a directional light: (points (N, 3), view_dirs (N, 3)) → (σ (N,), shaded rgb (N, 3)).

    ``light`` (3,) is the unit direction towards the light; ``mode`` is one of ``SHADING_MODES``. One light of
    ambient 0.45 + diffuse 0.65 spans about the brightness range of the Pocket World's two-light renders
    (``world_render.shade``: ambient 0.38, key 0.52, fill 0.22), the images the pocket prior learnt from.
    """

    def __init__(self, field: nn.Module, light: Tensor, mode: str = "lambertian", ambient: float = 0.45,
                 diffuse: float = 0.65):
        super().__init__()
        if mode not in SHADING_MODES:
            raise ValueError(f"unknown shading mode {mode!r}: use one of {', '.join(SHADING_MODES)}")
        self.field, self.light, self.mode, self.ambient, self.diffuse = field, light, mode, ambient, diffuse

    def forward(self, points: Tensor, view_dirs: Tensor) -> tuple[Tensor, Tensor]:
        sigma, albedo = self.field(points, view_dirs)
        if self.mode == "albedo":
            return sigma, albedo
        lambert = (self.field.normals(points) @ self.light).clamp_min(0.0)  # max(0, n · ℓ)  (N,)
        light = (self.ambient + self.diffuse * lambert)[:, None]
        rho = torch.ones_like(albedo) if self.mode == "textureless" else albedo
        return sigma, (rho * light).clamp(0.0, 1.0)


def sample_shading(generator: torch.Generator, camera_position: Tensor,
                   probabilities: tuple[float, float, float] = (0.2, 0.5, 0.3)) -> tuple[str, Tensor]:
    """A shading mode drawn with ``probabilities`` (albedo, lambertian, textureless) and a light direction (3,)
    near the camera's: DreamFusion samples the light around the camera so that the visible side is lit."""
    mode = SHADING_MODES[torch.multinomial(torch.tensor(probabilities), 1, generator=generator).item()]
    jitter = torch.randn(3, generator=generator) * 0.5
    up = torch.tensor([0.0, 1.0, 0.0]) * math.sqrt(0.5)  # a little from above, like the Pocket World's key light
    return mode, F.normalize(F.normalize(camera_position, dim=0) + up + jitter, dim=0)
