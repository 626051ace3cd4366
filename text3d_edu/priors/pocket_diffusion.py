"""The pocket diffusion prior: a tiny text-conditioned ``diffusers.UNet2DConditionModel`` in 32×32 pixel space.

Stable Diffusion in miniature, minus the VAE: ε_φ(x_t; y, t) is a U-Net whose lowest-resolution (8×8) blocks
cross-attend to the token features of a frozen CLIP text tower (here the pocket CLIP's), and whose time
embedding also receives the pooled text embedding. Cross-attention only at 8×8 keeps a training step at batch
32 around 0.4 s on two CPU cores (≈ 0.9 s with cross-attention at every resolution).

- forward process and loss: DDPM (Ho et al. 2020, https://arxiv.org/abs/2006.11239), eq. 4 and eq. 14, with
  diffusers' ``DDPMScheduler`` (linear β from 1e-4 to 0.02, T = 1000);
- 10 % of training captions are replaced by "" so that one network is both ε_φ(x_t; y, t) and ε_φ(x_t; t), as
  classifier-free guidance needs (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598);
- sampling: DDIM (Song et al. 2021, https://arxiv.org/abs/2010.02502) with ``use_clipped_model_output=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from text3d_edu.priors.base import Conditioning, DiffusionPrior, check_images, check_prompts, resize
from text3d_edu.priors.clip import warn_unknown_words
from text3d_edu.priors.pocket_clip import (
    IMAGE_SIZE,
    TEXT_WIDTH,
    WEIGHTS_DIR,
    build_tokenizer,
    load_clip_model,
    text_features,
)

UNET_WEIGHTS = "pocket_unet.safetensors"

POCKET_UNET_CONFIG = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64, 64),  # 32×32 → 16×16 → 8×8
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "cross_attention_dim": TEXT_WIDTH,
    "attention_head_dim": 4,  # diffusers reads this as the number of heads
    "norm_num_groups": 8,
    "class_embed_type": "projection",  # the pooled text embedding, added to the time embedding
    "projection_class_embeddings_input_dim": 64,
}

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,  # x̂_0 ∈ [−1, 1]: the pixel range
}


def build_unet(seed: int = 0):
    """A randomly initialised pocket ``UNet2DConditionModel``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**POCKET_UNET_CONFIG)


def build_scheduler():
    """The training noise schedule: a diffusers ``DDPMScheduler`` (T = 1000, linear β)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


class PocketTextConditioned(DiffusionPrior):
    """What the pocket priors share: a ``UNet2DConditionModel`` ε_φ(x_t; y, t) conditioned on the frozen pocket CLIP
    (token features (B, 20, 64) through cross-attention, the pooled embedding (B, 64) added to the time embedding)
    and a DDPM noise schedule. Subclasses say what x_t is: ``images_to_model``, ``model_to_images``, ``model_shape``.

    unet: a ``UNet2DConditionModel``; clip_model: the pocket ``open_clip.CLIP`` whose frozen text tower encodes
    prompts; scheduler: the training ``DDPMScheduler``; vocabulary: words the world knows (others raise a warning).
    """

    def __init__(self, unet, clip_model, scheduler, tokenizer=None, vocabulary: set[str] | None = None,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.clip_model = clip_model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer or build_tokenizer()
        self.vocabulary = vocabulary
        self.scheduler_config = dict(scheduler.config)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device)  # ᾱ_t, (T,)
        self.num_train_timesteps = scheduler.config.num_train_timesteps

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> Conditioning:
        hidden, pooled = text_features(self.clip_model, self.tokenizer(prompts).to(self.device))
        return Conditioning(hidden, pooled)  # (B, 20, 64), (B, 64)

    def encode_prompt(self, prompts: list[str]) -> Conditioning:
        """Prompts (B,) → token features (B, 20, 64) and pooled embedding (B, 64) of the frozen pocket CLIP."""
        prompts = check_prompts(prompts)
        warn_unknown_words(prompts, self.vocabulary)
        return self._encode(prompts)

    def encode_unconditional(self, batch: int = 1) -> Conditioning:
        """The empty prompt's condition, (batch, 20, 64) and (batch, 64)."""
        return self._encode([""]).expand(batch)

    def predict_noise(self, x_t: Tensor, t: Tensor | int, cond: Conditioning) -> Tensor:
        """ε_φ(x_t; y, t): x_t (B, *model_shape), t int or (B,), cond (B or 1 rows) → ε (B, *model_shape)."""
        batch = self.check_model_input(x_t).shape[0]
        t = self.timesteps_for(t, batch).to(self.device)
        cond = cond.expand(batch)
        return self.unet(x_t, t, encoder_hidden_states=cond.hidden_states, class_labels=cond.pooled).sample


class PocketDiffusionPrior(PocketTextConditioned):
    """The pocket U-Net behind the diffusion prior interface; x_t lives in pixel space, (B, 3, 32, 32) in [−1, 1]."""

    def __init__(self, unet, clip_model, tokenizer=None, vocabulary: set[str] | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(unet, clip_model, build_scheduler(), tokenizer, vocabulary, device)
        self.image_size = IMAGE_SIZE
        self.model_shape = (3, IMAGE_SIZE, IMAGE_SIZE)

    def images_to_model(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] → x_0 = 2·image − 1, resized to (B, 3, 32, 32)."""
        return resize(check_images(images).to(self.device), IMAGE_SIZE) * 2 - 1

    def model_to_images(self, x_0: Tensor) -> Tensor:
        """x_0 (B, 3, 32, 32) → images (B, 3, 32, 32) in [0, 1]."""
        return ((self.check_model_input(x_0) + 1) / 2).clamp(0, 1)


def load_unet(weights_dir: str | Path | None = None):
    """The trained pocket U-Net (EMA weights) from ``weights_dir`` (the package's weights by default)."""
    from safetensors.torch import load_file

    path = Path(weights_dir or WEIGHTS_DIR) / UNET_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"no pocket U-Net weights at {path}; train them with `text3d-edu train-pocket`")
    unet = build_unet()
    unet.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return unet


def load_pocket_diffusion(weights_dir: str | Path | None = None,
                          device: str | torch.device = "cpu") -> PocketDiffusionPrior:
    """The pocket diffusion prior (offline, from the shipped safetensors)."""
    from text3d_edu.toyworld import vocabulary

    return PocketDiffusionPrior(load_unet(weights_dir), load_clip_model(weights_dir), vocabulary=vocabulary(),
                                device=device)
