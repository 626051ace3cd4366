"""CLIP guidance: Dream Fields (Jain et al., CVPR 2022, https://arxiv.org/abs/2112.01455) and DietNeRF's
semantic-consistency loss (Jain et al., ICCV 2021, https://arxiv.org/abs/2104.00677).

Dream Fields maximises the similarity between a rendered image and the prompt in CLIP's embedding space:

    L_CLIP(θ) = −cos( φ_img(aug(g(θ, c) over a random background)), φ_txt(y) )

plus a transmittance regulariser that keeps most rays empty: L_T = −min(τ, mean(T)), T = 1 − opacity.
The tricks matter: CLIP is easily fooled, so Dream Fields composites renders over *random* backgrounds (the
object alone must carry the meaning; otherwise the field paints the prompt into the background fog) and
augments the image (random crops / shifts) so that the optimisation cannot exploit a single pixel grid.

DietNeRF's few-view loss compares a rendered novel view Î with a real photo I instead of a caption:
L_SC(I, Î) = λ φ(I)ᵀ φ(Î) (a similarity to maximise; we return its negative as a loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from text3d_edu.priors import TextImagePrior


@dataclass
class CLIPLossConfig:
    """Options of the Dream Fields loss."""

    transmittance_target: float = 0.85  # τ: the mean transmittance the regulariser asks for
    transmittance_weight: float = 1.0  # λ_T; 0.5 left a coloured haze around the object (lecture 02, section 5)
    random_backgrounds: bool = True
    max_shift: int = 2  # pixels of random translation (a cheap crop-and-resize at 32×32)


def random_backgrounds(batch: int, size: int, generator: torch.Generator | None = None) -> Tensor:
    """Backgrounds (B, 3, H, W): half solid random colours, half smooth random gradients (Dream Fields uses
    checkerboards, noise and gradients)."""
    colours = torch.rand(batch, 2, 3, generator=generator)
    ramp = torch.linspace(0, 1, size)
    direction = torch.rand(batch, generator=generator) < 0.5
    blend = torch.where(direction[:, None, None], ramp[None, :, None].expand(batch, size, size),
                        ramp[None, None, :].expand(batch, size, size))[:, None]  # (B, 1, H, W)
    solid = torch.rand(batch, generator=generator) < 0.5
    blend = torch.where(solid[:, None, None, None], torch.zeros_like(blend), blend)
    return colours[:, 0, :, None, None] * (1 - blend) + colours[:, 1, :, None, None] * blend


def augment(images: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Random translation by up to ``max_shift`` pixels with edge padding: (B, 3, H, W) → (B, 3, H, W)."""
    if max_shift == 0:
        return images
    padded = F.pad(images, [max_shift] * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy:dy + images.shape[2], dx:dx + images.shape[3]]


def clip_loss(clip: TextImagePrior, premultiplied_rgb: Tensor, opacity: Tensor, text_embedding: Tensor,
              config: CLIPLossConfig | None = None, generator: torch.Generator | None = None,
              background: Tensor | None = None) -> tuple[Tensor, dict]:
    """Dream Fields' loss for renders composited on black: ``premultiplied_rgb`` (B, 3, H, W), ``opacity``
    (B, H, W), and the prompt's unit embedding ``text_embedding`` (1, D) or (B, D).

    ``background`` (B, 3, H, W) or (3,) replaces the random backgrounds when given. Returns (loss, info) with the
    mean cosine similarity and mean transmittance in ``info``.
    """
    config = config or CLIPLossConfig()
    batch, _, size, _ = premultiplied_rgb.shape
    if opacity.shape != (batch, size, size):
        raise ValueError(f"expected opacity of shape ({batch}, {size}, {size}), got {tuple(opacity.shape)}")
    if background is None:
        background = (random_backgrounds(batch, size, generator) if config.random_backgrounds
                      else torch.full((batch, 3, size, size), 0.5))
    elif background.ndim == 1:
        background = background[None, :, None, None].expand(batch, 3, size, size)
    images = premultiplied_rgb + (1 - opacity[:, None]) * background
    image_embedding = clip.encode_image(augment(images, config.max_shift, generator))  # (B, D), unit norm
    cosine = (image_embedding * text_embedding).sum(dim=-1)  # (B,)
    transmittance = 1 - opacity.mean()
    loss = -cosine.mean() - config.transmittance_weight * torch.clamp(transmittance, max=config.transmittance_target)
    return loss, {"cosine": cosine.mean().item(), "transmittance": transmittance.item()}


def semantic_consistency_loss(clip: TextImagePrior, real: Tensor, rendered: Tensor, weight: float = 1.0) -> Tensor:
    """DietNeRF's L_SC = λ φ(I)ᵀ φ(Î), as a loss to minimise (its negative). real, rendered: (B, 3, H, W)."""
    with torch.no_grad():
        target = clip.encode_image(real)
    return -weight * (clip.encode_image(rendered) * target).sum(dim=-1).mean()
