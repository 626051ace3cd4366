"""The pocket *latent* diffusion prior: Stable Diffusion in miniature, VAE included (lecture 00 and 04, Magic3D).

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
https://arxiv.org/abs/2112.10752) splits the generative model in two:

1. an autoencoder, trained once: an encoder ℰ maps an image x (3, 64, 64) in [−1, 1] to a Gaussian q(z | x) =
   N(μ(x), σ²(x)) over latents z (4, h, w), h = w = 16 (or 8), and a decoder 𝒟 maps z back, 𝒟(z) ≈ x. Its loss
   (Rombach et al. §3.1 and appendix G; Kingma & Welling 2014 for the KL term) is
       L_VAE = ‖x − 𝒟(z)‖₁ + ‖x − 𝒟(z)‖² + β · KL(q(z | x) ‖ N(0, I)),   z ~ q(z | x)
   with a *small* β (here 1e-3 per latent element): the KL term only stops the latent scale from drifting, so
   that z stays a well-behaved, roughly unit-scale space; it is not a generative VAE. (SD adds a perceptual
   and a patch-GAN loss; the Pocket World is flat-shaded, so L1 + L2 suffice here.)
2. a diffusion model on the latents, the same DDPM / DDIM as in pixel space (lecture 00's symbols):
       z_0 = s · μ(x),   z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε,   L = ‖ε − ε_φ(z_t; y, t)‖²   (DDPM eq. 14)
   where s is the **scaling factor**: 1 / std of the encoder's latents over the training set (Rombach et al.
   §4.3.2 / appendix D.1; 0.18215 for SD's VAE), so z_0 has unit variance, as the noise schedule assumes
   (ᾱ_T ≈ 0 then really destroys the signal). Images come back as x = 𝒟(z_0 / s).

Why latents are cheaper per step: the U-Net's cost grows with the number of positions it convolves over; a
(4, 16, 16) latent has 1 024 numbers against 12 288 for a (3, 64, 64) image, 16× fewer positions, so a U-Net of
the same width runs ~16× fewer FLOPs per step, and the encoder / decoder run once per image, not once per
denoising step. In SDS (``guidance.sds``), ``images_to_model`` backpropagates through ℰ (as with Stable
Diffusion), so its gradient reaches the rendered pixels.

Text conditioning is the pixel prior's (``pocket_diffusion``): the frozen pocket CLIP's token features (B, 20, 64)
through cross-attention and its pooled embedding (B, 64) added to the time embedding; 10 % of training captions
are dropped to "" for classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598).

Trained by ``text3d-edu train-pocket-latent`` (``priors.train_latent``); the shipped weights, how they were trained
and what they measure are in ``text3d_edu/weights/POCKET_LDM_MODEL_CARD.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from text3d_edu.priors.base import check_images, resize
from text3d_edu.priors.pocket_clip import TEXT_WIDTH, WEIGHTS_DIR, load_clip_model
from text3d_edu.priors.pocket_diffusion import PocketTextConditioned

IMAGE_SIZE = 64
LATENT_CHANNELS = 4
VAE_WEIGHTS = "pocket_vae.safetensors"
LATENT_UNET_WEIGHTS = "pocket_latent_unet.safetensors"
TRAIN_COMMAND = "text3d-edu train-pocket-latent"


def vae_config(latent_size: int = 16, image_size: int = IMAGE_SIZE, width: int = 16) -> dict:
    """A small ``AutoencoderKL`` config: (3, image_size²) ↔ (4, latent_size²); one block per halving.

    width: channels of the first block (then 2·width for the others). No attention in the mid block: at 16×16 it
    costs more than it gives on flat-shaded renders.
    """
    factor = image_size // max(latent_size, 1)
    if latent_size < 1 or factor * latent_size != image_size or factor & (factor - 1):
        raise ValueError(f"latent_size {latent_size} must divide image_size {image_size} by a power of two")
    levels = factor.bit_length()  # 4 → 3 blocks (2 halvings), 8 → 4 blocks
    channels = (width,) + (2 * width,) * (levels - 1)
    return {"in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS, "sample_size": image_size,
            "down_block_types": ("DownEncoderBlock2D",) * levels, "up_block_types": ("UpDecoderBlock2D",) * levels,
            "block_out_channels": channels, "layers_per_block": 1, "norm_num_groups": 8,
            "mid_block_add_attention": False, "scaling_factor": 1.0}


def latent_unet_config(latent_size: int = 16, width: int = 32) -> dict:
    """A ``UNet2DConditionModel`` config on (4, latent_size²) latents; cross-attention below the top level.

    16×16 → 8×8 → 4×4 (three levels) for 16² latents, 8×8 → 4×4 (two) for 8² latents.
    """
    if latent_size >= 16:
        channels, down = (width, width * 3 // 2, width * 2), ("DownBlock2D", "CrossAttnDownBlock2D",
                                                              "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    else:
        channels, down = (width * 3 // 2, width * 2), ("DownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "UpBlock2D")
    return {"sample_size": latent_size, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
            "block_out_channels": channels, "layers_per_block": 1, "down_block_types": down,
            "mid_block_type": "UNetMidBlock2DCrossAttn", "up_block_types": up, "cross_attention_dim": TEXT_WIDTH,
            "attention_head_dim": 4, "norm_num_groups": 8, "class_embed_type": "projection",
            "projection_class_embeddings_input_dim": TEXT_WIDTH}


SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": False,  # latents are not bounded to [−1, 1] (Stable Diffusion does not clip either)
}


def build_vae(latent_size: int = 16, seed: int = 0, **kwargs):
    """A randomly initialised pocket ``AutoencoderKL`` (kwargs: image_size, width)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**vae_config(latent_size, **kwargs))


def build_latent_unet(latent_size: int = 16, seed: int = 0, **kwargs):
    """A randomly initialised latent ``UNet2DConditionModel`` (kwargs: width)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**latent_unet_config(latent_size, **kwargs))


def build_scheduler():
    """The training noise schedule: a diffusers ``DDPMScheduler`` (T = 1000, linear β, no clipping of x̂_0)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def encode(vae, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] (H = W = the VAE's sample_size) → z_0 = s·μ (or s·z, z ~ q(z|x)), (B, 4, h, w).
    Differentiable w.r.t. the images."""
    dist = vae.encode(images * 2 - 1).latent_dist
    z = dist.sample(generator) if sample else dist.mean  # (B, 4, h, w)
    return z * vae.config.scaling_factor


def decode(vae, z_0: Tensor) -> Tensor:
    """z_0 (B, 4, h, w) → images 𝒟(z_0 / s), (B, 3, H, W) in [0, 1]."""
    return ((vae.decode(z_0 / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)


class PocketLatentDiffusion(PocketTextConditioned):
    """The pocket LDM behind the diffusion prior interface, as ``real.StableDiffusionPrior`` is: x_t are latents
    (B, 4, h, w); ``images_to_model`` encodes with the VAE × scaling factor, ``model_to_images`` decodes. Prompts
    are encoded as the pixel prior's are (``pocket_diffusion.PocketTextConditioned``).

    unet: a latent ``UNet2DConditionModel``; vae: an ``AutoencoderKL`` whose config holds the scaling factor s;
    clip_model: the pocket ``open_clip.CLIP``; vocabulary: words the world knows (others raise a warning).
    """

    def __init__(self, unet, vae, clip_model, tokenizer=None, vocabulary: set[str] | None = None,
                 device: str | torch.device = "cpu"):
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the U-Net takes {unet.config.in_channels} channels, the VAE makes "
                             f"{vae.config.latent_channels}")
        super().__init__(unet, clip_model, build_scheduler(), tokenizer, vocabulary, device)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.image_size = vae.config.sample_size
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)  # 4 for 16² latents of 64² images
        latent = self.image_size // self.vae_scale
        if unet.config.sample_size != latent:
            raise ValueError(f"the U-Net was built for {unet.config.sample_size}² latents, the VAE makes {latent}²")
        self.model_shape = (vae.config.latent_channels, latent, latent)

    def images_to_model(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] → latents z_0 = s·μ(2·image − 1), (B, 4, h, w), the image resized to
        image_size first; differentiable w.r.t. the images (SDS backprops through the encoder)."""
        images = resize(check_images(images).to(self.device), self.image_size)
        return encode(self.vae, images)

    def model_to_images(self, x_0: Tensor) -> Tensor:
        """Latents z_0 (B, 4, h, w) → images 𝒟(z_0 / s), (B, 3, image_size, image_size) in [0, 1]."""
        return decode(self.vae, self.check_model_input(x_0))


def _load(build, path: Path, what: str):
    from text3d_edu.priors.train import load_weights

    if not path.exists():
        raise FileNotFoundError(f"no pocket LDM {what} weights at {path}: train them with `{TRAIN_COMMAND}` "
                                f"(see text3d_edu/weights/POCKET_LDM_MODEL_CARD.md), or pass weights_dir= a folder "
                                f"that holds {path.name}")
    # diffusers' bookkeeping keys ("_class_name", …) are not arguments of the model
    return load_weights(path, lambda config: build({k: v for k, v in config.items() if not k.startswith("_")}))


def load_vae(weights_dir: str | Path | None = None):
    """The trained pocket VAE (its config, scaling factor included, is read from the safetensors metadata)."""
    from diffusers import AutoencoderKL

    return _load(lambda c: AutoencoderKL(**c), Path(weights_dir or WEIGHTS_DIR) / VAE_WEIGHTS, "VAE")


def load_latent_unet(weights_dir: str | Path | None = None):
    """The trained latent U-Net (EMA weights)."""
    from diffusers import UNet2DConditionModel

    return _load(lambda c: UNet2DConditionModel(**c), Path(weights_dir or WEIGHTS_DIR) / LATENT_UNET_WEIGHTS,
                 "U-Net")


def load_pocket_latent(weights_dir: str | Path | None = None, clip_weights_dir: str | Path | None = None,
                       device: str | torch.device = "cpu") -> PocketLatentDiffusion:
    """The pocket latent diffusion prior from ``weights_dir`` (the package's weights by default); the text tower
    is the pocket CLIP from ``clip_weights_dir`` (the package's by default). Fails fast when weights are missing."""
    from text3d_edu.toyworld import vocabulary

    vae, unet = load_vae(weights_dir), load_latent_unet(weights_dir)
    return PocketLatentDiffusion(unet, vae, load_clip_model(clip_weights_dir), vocabulary=vocabulary(),
                                 device=device)
