"""SDFusion's first step (Cheng et al., "SDFusion: Multimodal 3D Shape Completion, Reconstruction, and Generation",
CVPR 2023, https://arxiv.org/abs/2212.04493, sec. 3.1): compress a truncated SDF grid X (32³ here; 64³ in the paper)
into a compact latent z (3 × 8³ here; 3 × 16³ in the paper) with a 3D VQ-VAE (van den Oord et al. 2017):

    z = E_φ(X)                    the encoder, (B, 1, 32, 32, 32) → (B, 3, 8, 8, 8)
    z_q = VQ(z)                   each 3-vector snapped to its nearest codebook entry e_k
    X̂ = D(z_q)                    the decoder back to (B, 1, 32, 32, 32)

    L_VQ = ‖X − X̂‖₁ + ‖sg[z] − z_q‖² + β ‖z − sg[z_q]‖²           (VQ-VAE eq. 3; β = 0.25, the commitment loss)

The quantisation has no gradient; the straight-through estimator copies the decoder's gradient to the encoder:
z_q ← z + sg[z_q − z]. As the official code (yccyenchicheng/SDFusion) does, the diffusion model (``unet``) runs on the
*pre-quantisation* latent z and the decoder quantises the denoised latent before decoding. The official code
rescales z to unit variance with one number; we standardise each channel at each latent cell,
(z − μ) / σ with μ, σ (3, 8, 8, 8) measured on the training set (``VQVAE.latent_mean`` / ``latent_std``): with one
global scale, most of z's variance was the fixed code of empty space, the shapes' differences were a small part of
it and the U-Net learnt to ignore the text (the text changed ε̂ by 0.6 %; text → shape kind 0.15). Standardised,
the text still reached ε̂ too weakly (kind 0.15–0.23) until the U-Net scaled the unit-norm CLIP features by √E and
training dropped the text less often than the other conditions (``unet``, ``train.DROP``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TRUNCATION = 0.2  # δ: the SDF is clamped to [−δ, δ] (the paper truncates at 0.2 of its [−1, 1]³ grid too)


@dataclass
class VQVAEConfig:
    grid: int = 32  # R: the SDF grid is R³ over [−1, 1]³; the latent is (R/4)³
    width: int = 32  # channels at R/2, doubled at R/4
    latent_channels: int = 3  # the paper's 3 channels
    codebook_size: int = 512  # K codebook entries e_k
    beta: float = 0.25  # the commitment weight β


class ResBlock3d(nn.Module):
    """x + conv(GELU(conv(GELU(x)))), channels kept: (B, C, D, H, W) → (B, C, D, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.GELU(), nn.Conv3d(channels, channels, 3, 1, 1), nn.GELU(),
                                 nn.Conv3d(channels, channels, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class Encoder(nn.Module):
    """E_φ: SDF / δ (B, 1, R, R, R) → z (B, 3, R/4, R/4, R/4); two stride-2 convolutions and a residual block
    (no convolution at full resolution: it would cost most of the CPU time)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        w = config.width
        self.net = nn.Sequential(
            nn.Conv3d(1, w, 4, 2, 1), nn.GELU(),  # (B, w, R/2, R/2, R/2)
            nn.Conv3d(w, 2 * w, 4, 2, 1),  # (B, 2w, R/4, …)
            ResBlock3d(2 * w), nn.GELU(), nn.Conv3d(2 * w, config.latent_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """D: z_q (B, 3, R/4, R/4, R/4) → SDF (B, 1, R, R, R), mirroring the encoder. Its output is linear (the official
    code's too): a tanh bounding it to [−δ, δ] saturated at +δ, "all empty", where the L1 loss has no gradient left
    in the first run of training; ``VQVAE.decode`` clamps it to [−δ, δ]."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        w = config.width
        self.net = nn.Sequential(
            nn.Conv3d(config.latent_channels, 2 * w, 3, 1, 1), ResBlock3d(2 * w), nn.GELU(),  # (B, 2w, R/4, …)
            nn.ConvTranspose3d(2 * w, w, 4, 2, 1), nn.GELU(),  # (B, w, R/2, …)
            nn.ConvTranspose3d(w, 1, 4, 2, 1))  # (B, 1, R, R, R)

    def forward(self, z_q: Tensor) -> Tensor:
        return TRUNCATION * self.net(z_q)


class Codebook(nn.Module):
    """The K codebook entries e_k ∈ R^3 and the nearest-entry quantisation with the straight-through estimator."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.beta = config.beta
        self.embedding = nn.Embedding(config.codebook_size, config.latent_channels)
        # entries spread over [−1, 1]³: the usual ±1/K start (the official code's) collapsed our 3-channel encoder
        # onto a few entries near 0 and the decoder to "all empty" (occupancy IoU 0.0 after 1200 steps; ±1: 0.61
        # after 100)
        nn.init.uniform_(self.embedding.weight, -1.0, 1.0)

    def indices(self, z: Tensor) -> Tensor:
        """The nearest entry k of every latent vector: z (B, C, d, h, w) → long (B, d, h, w)."""
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])  # (B·d·h·w, C)
        return torch.cdist(flat, self.embedding.weight).argmin(dim=1).reshape(z.shape[0], *z.shape[2:])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, C, d, h, w) → (z_q through the straight-through estimator (B, C, d, h, w), the VQ loss
        ‖sg[z] − z_q‖² + β‖z − sg[z_q]‖² (a scalar), the indices (B, d, h, w))."""
        k = self.indices(z)
        z_q = self.embedding(k).movedim(-1, 1)  # (B, C, d, h, w)
        codebook_loss = F.mse_loss(z_q, z.detach())  # moves e_k towards the encoder's outputs
        commitment_loss = F.mse_loss(z, z_q.detach())  # keeps the encoder committed to its entries
        z_q = z + (z_q - z).detach()  # straight-through: the forward value is z_q, the gradient flows to z
        return z_q, codebook_loss + self.beta * commitment_loss, k


class VQVAE(nn.Module):
    """The 3D VQ-VAE: SDF grids (B, R, R, R) in [−δ, δ] ↔ latents (B, 3, R/4, R/4, R/4)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder, self.codebook, self.decoder = Encoder(config), Codebook(config), Decoder(config)
        # μ and σ of E_φ(X) at each channel and cell over the training set, set after training: (z − μ) / σ has
        # zero mean and unit variance, the scale the diffusion model's noise schedule assumes
        d = config.grid // 4
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels, d, d, d))
        self.register_buffer("latent_std", torch.ones(config.latent_channels, d, d, d))

    def encode(self, sdf: Tensor) -> Tensor:
        """The pre-quantisation latent z: SDF (B, R, R, R) → (B, 3, R/4, R/4, R/4), not standardised."""
        return self.encoder(sdf[:, None] / TRUNCATION)

    def decode(self, z: Tensor) -> Tensor:
        """Quantise then decode: z (B, 3, R/4, R/4, R/4), not standardised → SDF (B, R, R, R) in [−δ, δ]."""
        return self.decoder(self.codebook(z)[0])[:, 0].clamp(-TRUNCATION, TRUNCATION)

    def forward(self, sdf: Tensor) -> tuple[Tensor, Tensor]:
        """SDF (B, R, R, R) → (the reconstruction X̂ (B, R, R, R), unclamped, the VQ loss, a scalar)."""
        z_q, vq_loss, _ = self.codebook(self.encode(sdf))
        return self.decoder(z_q)[:, 0], vq_loss


def vqvae_loss(model: VQVAE, sdf: Tensor) -> Tensor:
    """L_VQ on a batch of truncated SDFs (B, R, R, R): the L1 reconstruction error in units of δ plus the codebook and
    commitment terms (``Codebook.forward``) → a scalar."""
    reconstruction, vq_loss = model(sdf)
    return (reconstruction - sdf).abs().mean() / TRUNCATION + vq_loss
