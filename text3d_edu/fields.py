"""3D fields: functions θ ↦ (σ, c) of a point (and view direction), the thing every text-to-3D method optimises.

Every field is a ``torch.nn.Module`` called as ``field(points, view_dirs) -> (sigma, rgb)``:
points (N, 3) in [−1, 1]³, unit view directions (N, 3) → density σ (N,) ≥ 0 and colour (N, 3) in [0, 1].

- ``NeRFField``: the classic NeRF (Mildenhall et al., ECCV 2020): positional encoding γ (eq. 4) and an MLP.
  Small, smooth, slow: every sample runs the whole MLP.
- ``GridField``: an explicit voxel grid of density and colour read by trilinear interpolation (in the spirit of
  Plenoxels / DVGO, CVPR 2022). Many more parameters, almost no compute per sample: an order of magnitude faster
  to fit on a CPU, which is why the text-to-3D lectures use it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check(points: Tensor, view_dirs: Tensor) -> None:
    if points.ndim != 2 or points.shape[-1] != 3 or view_dirs.shape != points.shape:
        raise ValueError(f"expected points and view_dirs of shape (N, 3), got {tuple(points.shape)} "
                         f"and {tuple(view_dirs.shape)}")


class PositionalEncoding(nn.Module):
    """γ(p) = (p, sin(2⁰πp), cos(2⁰πp), …, sin(2^{L−1}πp), cos(2^{L−1}πp)) (NeRF eq. 4, plus the identity).

    (N, D) → (N, D·(1 + 2L)). High frequencies let an MLP represent sharp edges (Tancik et al. 2020).
    """

    def __init__(self, n_frequencies: int):
        super().__init__()
        self.register_buffer("frequencies", (2.0 ** torch.arange(n_frequencies)) * math.pi, persistent=False)

    def output_dim(self, input_dim: int = 3) -> int:
        return input_dim * (1 + 2 * len(self.frequencies))

    def forward(self, p: Tensor) -> Tensor:
        angles = (p[..., None, :] * self.frequencies[:, None]).flatten(-2)  # (N, L·D)
        return torch.cat([p, torch.sin(angles), torch.cos(angles)], dim=-1)


class NeRFField(nn.Module):
    """The classic NeRF MLP: σ(γ(x)) and c(γ(x), γ(d)), with ``depth`` hidden layers of ``width`` units."""

    def __init__(self, n_frequencies: int = 10, n_dir_frequencies: int = 4, width: int = 128, depth: int = 4):
        super().__init__()
        self.encode_position = PositionalEncoding(n_frequencies)
        self.encode_direction = PositionalEncoding(n_dir_frequencies)
        layers: list[nn.Module] = []
        in_dim = self.encode_position.output_dim()
        for _ in range(depth):
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.trunk = nn.Sequential(*layers)
        self.density_head = nn.Linear(width, 1)
        self.colour_head = nn.Sequential(
            nn.Linear(width + self.encode_direction.output_dim(), width // 2), nn.ReLU(), nn.Linear(width // 2, 3)
        )

    def forward(self, points: Tensor, view_dirs: Tensor) -> tuple[Tensor, Tensor]:
        _check(points, view_dirs)
        features = self.trunk(self.encode_position(points))
        sigma = F.softplus(self.density_head(features)[:, 0] - 1.0) * 10.0  # ×10: reach opaque σδ in few steps
        rgb = torch.sigmoid(self.colour_head(torch.cat([features, self.encode_direction(view_dirs)], dim=-1)))
        return sigma, rgb


class TruncatedExp(torch.autograd.Function):
    """exp(x) whose *gradient* is computed at min(x, 15) (Instant-NGP / torch-ngp's ``trunc_exp``): the density
    may grow freely, while a very dense voxel cannot blow up Adam's step with an exp-sized gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trilinear(grid: Tensor, points: Tensor) -> Tensor:
    """Trilinear lookup of a grid (1, C, R, R, R) over [−1, 1]³, indexed [x, y, z], at points (N, 3) → (N, C)."""
    # grid_sample reads coordinates as (W, H, D) = (z, y, x) for a volume indexed [x, y, z]
    coords = points.flip(-1)[None, :, None, None, :]  # (1, N, 1, 1, 3)
    values = F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)
    return values[0, :, :, 0, 0].T


class GridField(nn.Module):
    """A dense grid over [−1, 1]³ storing a density logit and three colour logits per vertex.

    σ(x) = exp(trilinear(grid_σ, x)) with Instant-NGP's truncated exponential (``TruncatedExp``: the forward pass
    is exact, the gradient is clamped), c(x) = sigmoid(trilinear(grid_c, x)).
    Colour is view-independent. ``init`` chooses the starting density: "empty" (clear space, for fitting posed
    images) or "blob" (a soft ball in the centre, the usual start for text-to-3D distillation).
    """

    def __init__(self, resolution: int = 64, init: str = "empty", blob_radius: float = 0.5,
                 blob_density: float = 10.0, empty_density: float = 0.01):
        super().__init__()
        if init not in ("empty", "blob"):
            raise ValueError(f"unknown init {init!r}: use 'empty' or 'blob'")
        axis = torch.linspace(-1, 1, resolution)
        x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
        log_sigma = torch.full_like(x, math.log(empty_density))
        if init == "blob":  # σ = blob_density · exp(−r² / 2ρ²) inside, fading to empty outside
            r2 = x**2 + y**2 + z**2
            log_sigma = torch.logaddexp(log_sigma, math.log(blob_density) - r2 / (2 * blob_radius**2))
        self.log_sigma = nn.Parameter(log_sigma[None, None])  # (1, 1, R, R, R), indexed [x, y, z]
        self.colour_logits = nn.Parameter(torch.zeros(1, 3, resolution, resolution, resolution))

    @property
    def resolution(self) -> int:
        return self.log_sigma.shape[-1]

    def forward(self, points: Tensor, view_dirs: Tensor) -> tuple[Tensor, Tensor]:
        _check(points, view_dirs)
        inside = (points.abs() <= 1.0).all(dim=-1)
        sigma = TruncatedExp.apply(trilinear(self.log_sigma, points)[:, 0]) * inside
        rgb = torch.sigmoid(trilinear(self.colour_logits, points))
        return sigma, rgb

    def normals(self, points: Tensor) -> Tensor:
        """Unit normals n = −∇σ / ‖∇σ‖ (N, 3) at points (N, 3), from central differences of the log-density grid
        (∇σ ∝ ∇ log σ), read by trilinear lookup; differentiable with respect to the grid."""
        spacing = 2.0 / (self.resolution - 1)
        log_sigma = self.log_sigma[0, 0]  # (R, R, R), indexed [x, y, z]
        gradient = torch.stack(torch.gradient(log_sigma, spacing=spacing), dim=0)[None]  # (1, 3, R, R, R)
        return -F.normalize(trilinear(gradient, points), dim=-1, eps=1e-6)

    def total_variation(self) -> Tensor:
        """Mean squared difference between neighbouring vertices of both grids: a smoothness prior."""
        tv = 0.0
        for grid in (self.log_sigma, self.colour_logits):
            for dim in (2, 3, 4):
                tv = tv + grid.diff(dim=dim).pow(2).mean()
        return tv

    @torch.no_grad()
    def upsample(self, resolution: int) -> None:
        """Coarse-to-fine: resample both grids to ``resolution``³ (re-create the optimiser afterwards)."""
        for name in ("log_sigma", "colour_logits"):
            grid = getattr(self, name)
            fine = F.interpolate(grid, size=(resolution,) * 3, mode="trilinear", align_corners=True)
            setattr(self, name, nn.Parameter(fine))
