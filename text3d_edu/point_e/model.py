"""Point-E's denoiser: a transformer over one token per point (Nichol et al. 2022, https://arxiv.org/abs/2212.08751,
§4 and Fig. 3; the official ``point_e/models/transformer.py``).

A point cloud is a tensor (B, K, 6): each point's xyz and its rgb scaled to [−1, 1]. The seed's figure, in shapes
(D = ``width``):

    t (B,)            ──sinusoid(D) → MLP──▶ (B, 1, D)    the timestep token, *prepended* (not added to the points)
    f_I (B, E)        ──Linear──▶            (B, 1, D)    the conditioning image's CLIP features, one token
    coarse (B, K₀, 6) ──Linear──▶            (B, K₀, D)   the upsampler only: the base model's cloud, K₀ tokens
    x_t (B, K, 6)     ──Linear──▶            (B, K, D)    one token per noisy point

    [t][f_I]([coarse])[x_t] ─▶ LayerNorm ─▶ transformer ─▶ LayerNorm ─▶ drop the 2 (+ K₀) condition tokens
                            ─▶ Linear (zero-initialised) ─▶ ε̂ (B, K, 6)

The transformer has no positional encoding: the points are a *set*, and permuting the input points permutes the
output the same way. The output layer starts at zero (as the official code's ``output_proj``), so the untrained
model predicts ε̂ = 0 and the first steps of training are stable. Classifier-free guidance needs an unconditional
prediction: like the official ``CLIPImagePointDiffusionTransformer``, a dropped condition is the zero vector
f_I = 0 (``cond=None``). The upsampler always sees its coarse cloud: the guidance is over the image only.

Where ours differs: ``nn.TransformerEncoder`` (pre-LayerNorm) instead of Point-E's own blocks; widths of a few
hundred thousand parameters instead of 40M–1B, so that it trains on a laptop CPU. Our one f_I token is the official
single-vector variant's (``base40M-imagevec``, which also scales f_I by √dim); the paper's main models instead feed
CLIP's grid of 256 patch embeddings as 256 tokens, and predict a variance beside ε (12 output channels).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

POINT_CHANNELS = 6  # xyz, rgb


@dataclass
class DenoiserConfig:
    """Sizes of one Point-E denoiser; ``coarse_points`` > 0 makes it an upsampler of a ``coarse_points`` cloud."""

    points: int = 256  # K: the points it denoises
    coarse_points: int = 0  # K₀: the base model's points it is conditioned on (0: a base model)
    width: int = 128  # D
    layers: int = 4
    heads: int = 4
    cond_dim: int = 64  # E: the CLIP image features' size (the pocket CLIP's embedding)

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.points < 1 or self.coarse_points < 0:
            raise ValueError(f"points must be >= 1 and coarse_points >= 0, got {self.points}, {self.coarse_points}")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """The transformer's sinusoidal embedding of the timesteps t (B,) → (B, dim) (as in DDPM and Point-E)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=t.device)
    frequencies = torch.exp(-math.log(max_period) * steps / half)  # (half,)
    angles = t.float()[:, None] * frequencies[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class PointDenoiser(nn.Module):
    """ε̂(x_t; t, f_I[, coarse]): the noise in a noisy cloud x_t (B, K, 6), from tokens as in the module docstring."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(config.cond_dim, width)
        self.point_proj = nn.Linear(POINT_CHANNELS, width)
        self.coarse_proj = nn.Linear(POINT_CHANNELS, width) if config.coarse_points else None
        self.ln_pre = nn.LayerNorm(width)
        block = nn.TransformerEncoderLayer(width, config.heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.backbone = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.ln_post = nn.LayerNorm(width)
        self.output_proj = nn.Linear(width, POINT_CHANNELS)
        nn.init.zeros_(self.output_proj.weight)  # ε̂ = 0 at the start of training
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None, coarse: Tensor | None = None) -> Tensor:
        """x_t (B, K, 6), t (B,) integer timesteps, cond (B, E) CLIP image features or None (dropped: zeros),
        coarse (B, K₀, 6) for an upsampler → ε̂ (B, K, 6)."""
        batch, k, channels = x_t.shape
        if channels != POINT_CHANNELS or k != self.config.points:
            raise ValueError(f"expected x_t of shape (B, {self.config.points}, {POINT_CHANNELS}), "
                             f"got {tuple(x_t.shape)}")
        if (coarse is None) != (self.coarse_proj is None):
            raise ValueError("an upsampler needs the coarse cloud (coarse=...), a base model takes none")
        if cond is None:
            cond = x_t.new_zeros(batch, self.config.cond_dim)
        time_token = self.time_mlp(timestep_embedding(t, self.config.width))[:, None]  # (B, 1, D)
        tokens = [time_token, self.cond_proj(cond)[:, None]]  # + (B, 1, D)
        if coarse is not None:
            tokens.append(self.coarse_proj(coarse))  # + (B, K₀, D)
        tokens.append(self.point_proj(x_t))  # + (B, K, D)
        h = self.backbone(self.ln_pre(torch.cat(tokens, dim=1)))  # (B, 2 + K₀ + K, D)
        h = self.ln_post(h[:, -k:])  # drop the condition tokens: (B, K, D)
        return self.output_proj(h)  # (B, K, 6)

    def config_dict(self) -> dict:
        return asdict(self.config)
