"""Real backends: pretrained OpenCLIP and Stable Diffusion behind the same interfaces as the pocket priors.

- OpenCLIP (Cherti et al. 2023, https://arxiv.org/abs/2212.07143; CLIP, Radford et al. 2021) is the same
  ``open_clip`` model class as the pocket CLIP, so it reuses ``OpenCLIPPrior``.
- Stable Diffusion (latent diffusion, Rombach et al. 2022, https://arxiv.org/abs/2112.10752) runs the diffusion
  in the latent space of a VAE: x_0 = VAE.encode(image) × scaling_factor, (B, 4, H/8, W/8), and
  image = VAE.decode(x_0 / scaling_factor). ε_φ is a ``UNet2DConditionModel`` cross-attending to CLIP text
  token features (B, 77, 768 or 1024). Guidance: ``guided_noise`` with ω = diffusers' guidance_scale − 1.
  Half-precision weights (``load_stable_diffusion(dtype=torch.float16)``) are handled as threestudio's
  ``StableDiffusionGuidance`` does (``encode_images``, ``forward_unet``, ``decode_latents``): inputs are cast to
  the VAE's / U-Net's dtype at the call and the outputs back to the caller's dtype, so images, x_t, ε and the SDS
  gradient that reaches the float32 3D field stay float32.

Both classes take their components, so tests build tiny random ones of the same classes (as diffusers'
``get_dummy_components()`` does) and run this code on CPU. The loaders look for weights in the Hugging Face
cache first and, with no weights and no network, fail within seconds with a message saying what is missing
and how to get it (open_clip alone would retry for about 45 s).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from text3d_edu.priors.base import Conditioning, DiffusionPrior, check_images, check_prompts, resize
from text3d_edu.priors.clip import OpenCLIPPrior

DEFAULT_OPENCLIP = ("ViT-B-32", "laion2b_s34b_b79k")
DEFAULT_STABLE_DIFFUSION = "stabilityai/stable-diffusion-2-1-base"


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither in the local cache nor downloadable from here."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (False at once when HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached(repo_id: str, filename: str) -> str | None:
    """The path of ``filename`` of ``repo_id`` in the local Hugging Face cache, or None (no network used)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id that is not a valid repo id is simply not cached
        return None
    return path if isinstance(path, str) else None


def find_openclip_weights(model_name: str, pretrained: str) -> str | None:
    """The local file of an open_clip pretrained tag (or a path given as ``pretrained``), or None."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if os.path.isfile(pretrained):
        return pretrained
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag {pretrained!r} for {model_name!r}; known tags: "
                         f"{', '.join(open_clip.list_pretrained_tags_by_model(model_name)) or 'none'}")
    repo_id, filename = os.path.split(cfg.get("hf_hub", ""))  # 'org/name/' → no file name: the default ones
    names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")  # open_clip prefers it too
    for name in names:
        path = _cached(repo_id, name) if repo_id else None
        if path:
            return path
    return None


def load_openclip(model_name: str = DEFAULT_OPENCLIP[0], pretrained: str = DEFAULT_OPENCLIP[1],
                  device: str | torch.device = "cpu") -> OpenCLIPPrior:
    """Pretrained OpenCLIP behind the text–image prior interface.

    Uses the Hugging Face cache when the weights are there (no network needed); downloads them when the Hub is
    reachable; otherwise raises ``WeightsUnavailable`` at once, saying how to get them.
    """
    import open_clip

    path = find_openclip_weights(model_name, pretrained)
    if path is None and not hub_reachable():
        raise WeightsUnavailable(
            f"OpenCLIP weights {model_name}/{pretrained} are not in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the Hub cannot be reached (offline). "
            f"On a machine with internet run: python -c \"import open_clip; open_clip.create_model_and_transforms("
            f"'{model_name}', pretrained='{pretrained}')\" and copy its ~/.cache/huggingface to this one, "
            "or pass pretrained=<path to the weights file>; offline, use backend='pocket'.")
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=path or pretrained,
                                                        force_quick_gelu=cfg.get("quick_gelu", False))
    size = model.visual.image_size
    return OpenCLIPPrior(model, open_clip.get_tokenizer(model_name), size[0] if isinstance(size, tuple) else size,
                         mean=cfg.get("mean", model.visual.image_mean), std=cfg.get("std", model.visual.image_std),
                         device=device)


class StableDiffusionPrior(DiffusionPrior):
    """Latent diffusion behind the diffusion prior interface: x_t (B, 4, h, w) latents, images (B, 3, 8h, 8w).

    unet: ``UNet2DConditionModel``; vae: ``AutoencoderKL``; text_encoder: ``transformers.CLIPTextModel``;
    tokenizer: a Hugging Face tokenizer, or any callable list[str] → ids (B, L); scheduler: a diffusers
    scheduler whose config gives the ᾱ_t schedule (ε- or v-prediction; ``predict_noise`` always returns ε).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        # the samplers receive ε from predict_noise whatever the network predicts
        self.scheduler_config = {**scheduler.config, "prediction_type": "epsilon"}
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device)  # ᾱ_t, (T,)
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for Stable Diffusion
        latent = unet.config.sample_size
        self.model_shape = (unet.config.in_channels, latent, latent)
        self.image_size = latent * self.vae_scale

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> Conditioning:
        if hasattr(self.tokenizer, "model_max_length"):  # a Hugging Face tokenizer
            ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
        else:
            ids = self.tokenizer(prompts)
        return Conditioning(self.text_encoder(ids.to(self.device))[0])  # last hidden state (B, L, D)

    def encode_prompt(self, prompts: list[str]) -> Conditioning:
        """Prompts (B,) → CLIP text token features (B, 77, D), as Stable Diffusion's pipeline computes them."""
        return self._encode(check_prompts(prompts))

    def encode_unconditional(self, batch: int = 1) -> Conditioning:
        """The empty prompt's token features (batch, 77, D)."""
        return self._encode([""]).expand(batch)

    def predict_noise(self, x_t: Tensor, t: Tensor | int, cond: Conditioning) -> Tensor:
        """ε_φ(x_t; y, t): latents x_t (B, 4, h, w), t int or (B,), cond (B or 1 rows) → ε (B, 4, h, w)."""
        batch = self.check_model_input(x_t).shape[0]
        t = self.timesteps_for(t, batch).to(self.device)
        dtype = self.unet.dtype  # the weights' dtype (float16 for half precision); ε comes back in x_t's dtype
        out = self.unet(x_t.to(dtype), t, encoder_hidden_states=cond.expand(batch).hidden_states.to(dtype))
        out = out.sample.to(x_t.dtype)  # (B, 4, h, w)
        if self.prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x_0  ⇒  ε = √ᾱ v + √(1−ᾱ) x_t
            a = self.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out

    def images_to_model(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] → latents x_0 = VAE mean(2·image − 1) × scaling_factor, (B, 4, h, w);
        differentiable (latent SDS backprops through the encoder); the latents have the images' dtype."""
        x = resize(check_images(images).to(self.device), self.image_size) * 2 - 1  # (B, 3, H', W') in [−1, 1]
        mean = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean  # (B, 4, h, w) in the VAE's dtype
        return mean.to(images.dtype) * self.vae.config.scaling_factor

    def model_to_images(self, x_0: Tensor) -> Tensor:
        """Latents (B, 4, h, w) → images (B, 3, 8h, 8w) in [0, 1], in the latents' dtype."""
        z = self.check_model_input(x_0) / self.vae.config.scaling_factor
        decoded = self.vae.decode(z.to(self.vae.dtype)).sample.to(x_0.dtype)  # (B, 3, 8h, 8w) in [−1, 1]
        return ((decoded + 1) / 2).clamp(0, 1)


def load_stable_diffusion(model_id: str = DEFAULT_STABLE_DIFFUSION, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32) -> StableDiffusionPrior:
    """Stable Diffusion from the Hugging Face cache (or a local folder, or a download when online).

    With no local copy and no network, raises ``WeightsUnavailable`` at once, saying how to get the weights.
    ``dtype``: the weights' dtype (torch.float16 halves memory and time on a GPU, as threestudio's
    ``half_precision_weights``); the prior's images, latents and ε stay float32 (see the module docstring).
    """
    local = Path(model_id).is_dir() or _cached(model_id, "model_index.json") is not None
    if not local and not hub_reachable():
        raise WeightsUnavailable(
            f"Stable Diffusion {model_id!r} is not in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the Hub cannot be reached (offline). "
            f"On a machine with internet run: huggingface-cli download {model_id} (≈ 5 GB) and copy the cache "
            "here, or pass model_id=<a local folder saved by pipeline.save_pretrained>; offline, use "
            "backend='pocket'.")
    from diffusers import StableDiffusionPipeline  # imports transformers: only once we know it can load

    pipe = StableDiffusionPipeline.from_pretrained(model_id, torch_dtype=dtype, local_files_only=local,
                                                   safety_checker=None, requires_safety_checker=False)
    return StableDiffusionPrior(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, device)
