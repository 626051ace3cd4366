"""Training the pocket latent diffusion prior: ``text3d-edu train-pocket-latent`` calls ``train_pocket_latent``.

1. Render the data set (``priors.data.render_dataset`` at 64×64): the pixel prior's objects, views and captions.
2. Train the VAE (``train_vae``): L = ‖x − 𝒟(z)‖₁ + ‖x − 𝒟(z)‖² + β·KL(q(z|x) ‖ N(0, I)), z ~ q(z|x)
   (Rombach et al. 2022, https://arxiv.org/abs/2112.10752, §3.1; β small, per latent element).
3. Measure the scaling factor s = 1 / std(μ(x)) over training images (Rombach et al., appendix D.1) and store it
   in the VAE's config; report the held-out reconstruction PSNR.
4. Freeze the VAE, cache z_0 = s·μ(x) for every training image once, and train the latent U-Net on DDPM's
   simplified loss (Ho et al. 2020, eq. 14) on them (``train_latent_unet``), 10 % captions dropped, EMA weights.

Both phases run in ``priors.train.training_loop`` (Accelerate, checkpoints every ``checkpoint_every`` steps, exact
--resume, tqdm, a NaN stop), exactly as ``train-pocket``'s phases do.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from text3d_edu.priors import data as pocket_data
from text3d_edu.priors import pocket_clip, pocket_latent
from text3d_edu.priors.train import save_weights, train_denoiser, training_loop

STATS_FILE = "pocket_latent.json"
VAE_PHASE, UNET_PHASE = 2, 3  # phase ids in the step generators (0, 1 are train-pocket's CLIP and U-Net)


def vae_loss(vae, images: Tensor, generator: torch.Generator | None = None, kl_weight: float = 1e-3) -> dict:
    """Images (B, 3, H, W) in [0, 1] → {"loss", "l1", "l2", "kl"} (scalars): the loss of step 2 above, on
    x = 2·image − 1; "kl" is KL(q(z|x) ‖ N(0, I)) per latent element, averaged over the batch."""
    x = images * 2 - 1
    dist = vae.encode(x).latent_dist
    z = dist.sample(generator)  # the reparameterised z ~ q(z|x), (B, 4, h, w)
    x_hat = vae.decode(z).sample  # (B, 3, H, W)
    l1, l2 = (x_hat - x).abs().mean(), F.mse_loss(x_hat, x)
    kl = dist.kl().mean() / z[0].numel()  # diffusers sums the KL over (C, h, w)
    return {"loss": l1 + l2 + kl_weight * kl, "l1": l1, "l2": l2, "kl": kl}


@torch.no_grad()
def measure_scaling_factor(vae, images: Tensor, batch_size: int = 256) -> float:
    """s = 1 / std of the encoder means μ(x) over uint8 images (N, 3, H, W): z_0 = s·μ has unit variance."""
    means = torch.cat([vae.encode(images[i:i + batch_size].float() / 255 * 2 - 1).latent_dist.mean
                       for i in range(0, len(images), batch_size)])
    return 1.0 / means.flatten().std().item()


@torch.no_grad()
def encode_dataset(vae, images: Tensor, batch_size: int = 256) -> Tensor:
    """uint8 images (N, 3, H, W) → z_0 = s·μ(x), (N, 4, h, w) float32, s read from the VAE's config."""
    vae = vae.eval()
    return torch.cat([pocket_latent.encode(vae, images[i:i + batch_size].float() / 255)
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def reconstruction_psnr(vae, images: Tensor, batch_size: int = 256) -> float:
    """PSNR (dB) of 𝒟(μ(x)) against uint8 images (N, 3, H, W), in [0, 1], averaged over the images."""
    vae = vae.eval()
    psnrs = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float() / 255
        x_hat = pocket_latent.decode(vae, pocket_latent.encode(vae, x))
        psnrs.append(-10 * torch.log10(((x_hat - x) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)))
    return torch.cat(psnrs).mean().item()


def train_vae(images: Tensor, steps: int, seed: int, out: Path, resume: bool, latent_size: int = 16,
              batch_size: int = 32, lr: float = 1e-3, kl_weight: float = 1e-3, checkpoint_every: int = 500,
              vae=None):
    """Train the pocket VAE on uint8 images (N, 3, 64, 64); returns (VAE with its scaling factor set, smoothed loss).

    vae: a VAE to train (tests pass a tiny one); by default ``pocket_latent.build_vae(latent_size, seed)``.
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    accelerator = Accelerator()
    vae = vae if vae is not None else pocket_latent.build_vae(latent_size, seed, image_size=images.shape[-1])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(100, steps // 10), num_training_steps=steps)
    n = images.shape[0]

    def loss_fn(vae, generator):
        index = torch.randint(n, (batch_size,), generator=generator)  # (B,)
        x = images[index].float().to(accelerator.device) / 255  # (B, 3, 64, 64) in [0, 1]
        return vae_loss(vae, x, generator, kl_weight)["loss"]

    result = training_loop("vae", VAE_PHASE, accelerator, vae, optimizer, lr_scheduler, steps, loss_fn, out, seed,
                           resume, checkpoint_every)
    vae = result["model"].eval()
    vae.register_to_config(scaling_factor=measure_scaling_factor(vae, images[:2048]))
    return vae, result["loss"]


def train_latent_unet(data: dict, latents: Tensor, clip_model, steps: int, seed: int, out: Path, resume: bool,
                      unet=None, **kwargs):
    """DDPM training of the latent U-Net (``priors.train.train_denoiser``) on cached latents z_0 (N, 4, h, w)
    (``encode_dataset``) of ``data``'s images; returns (EMA U-Net, smoothed loss).

    unet: a U-Net to train (tests pass a tiny one); by default ``pocket_latent.build_latent_unet(h, seed)``.
    """
    unet = unet if unet is not None else pocket_latent.build_latent_unet(latents.shape[-1], seed)
    return train_denoiser("latent_unet", UNET_PHASE, unet, lambda index: latents[index], latents.shape[0], data,
                          pocket_latent.build_scheduler().alphas_cumprod, clip_model, steps, seed, out, resume,
                          **kwargs)


def train_pocket_latent(out_dir: str | Path = "runs/pocket_latent", weights_dir: str | Path | None = None,
                        vae_steps: int = 3000, latent_unet_steps: int = 4000, latent_size: int = 16, seed: int = 0,
                        resume: bool = False, n_objects: int = 2080, views_per_object: int = 12, threads: int = 2,
                        workers: int = 1, heldout_objects: int = 130, checkpoint_every: int = 500,
                        clip_weights_dir: str | Path | None = None, command: str = "") -> dict:
    """Render 64² data, train the VAE then the latent U-Net, and write both as safetensors into ``weights_dir``
    (the package's ``weights/`` by default) with ``pocket_latent.json`` (command, sizes, minutes, losses,
    held-out PSNR, scaling factor). The text tower is the shipped pocket CLIP (``clip_weights_dir``)."""
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(weights_dir or pocket_clip.WEIGHTS_DIR)
    progress_file = out / "progress.json"
    progress = json.loads(progress_file.read_text()) if resume and progress_file.exists() else {}
    minutes = progress.get("minutes", {})

    def done(phase: str, started: float, **extra) -> None:
        minutes[phase] = minutes.get(phase, 0.0) + (time.time() - started) / 60
        progress.update(extra, minutes=minutes)
        progress_file.write_text(json.dumps(progress, indent=1))

    started = time.time()
    render = dict(seed=seed, progress=True, workers=workers, resolution=pocket_latent.IMAGE_SIZE)
    data = pocket_data.render_dataset(n_objects, views_per_object, cache_dir=out / "data", **render)
    held = pocket_data.render_dataset(heldout_objects, 2, held_out=True, cache_dir=out / "data", **render)
    done("data", started)

    vae_file = out / pocket_latent.VAE_WEIGHTS
    if resume and vae_file.exists():
        vae = pocket_latent.load_vae(out)
        print(f"[vae] resumed: trained weights found at {vae_file}")
    else:
        started = time.time()
        vae, vae_loss_value = train_vae(data["images"], vae_steps, seed, out, resume, latent_size,
                                        checkpoint_every=checkpoint_every)
        save_weights(vae, vae_file, dict(vae.config))
        vae = pocket_latent.load_vae(out)  # the float16-rounded weights, as shipped
        psnr = reconstruction_psnr(vae, held["images"])
        done("vae", started, vae_loss=vae_loss_value, vae_psnr_heldout=psnr,
             scaling_factor=vae.config.scaling_factor)
        print(f"[vae] held-out reconstruction PSNR {psnr:.2f} dB, s = {vae.config.scaling_factor:.4f}", flush=True)

    started = time.time()
    latents = encode_dataset(vae, data["images"])  # (N, 4, h, w)
    clip_model = pocket_clip.load_clip_model(clip_weights_dir)
    unet, unet_loss = train_latent_unet(data, latents, clip_model, latent_unet_steps, seed, out, resume,
                                        checkpoint_every=checkpoint_every)
    save_weights(unet, out / pocket_latent.LATENT_UNET_WEIGHTS, dict(unet.config))
    done("latent_unet", started, latent_unet_loss=unet_loss)

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    stats = {
        "command": command, "seed": seed, "vae_steps": vae_steps, "latent_unet_steps": latent_unet_steps,
        "threads": threads, "latent_shape": list(latents.shape[1:]),
        "data": {"objects": n_objects, "views_per_object": views_per_object, "images": int(data["images"].shape[0]),
                 "resolution": pocket_latent.IMAGE_SIZE},
        "minutes": {**{k: round(v, 2) for k, v in minutes.items()}, "total": round(sum(minutes.values()), 2)},
        "vae_loss": progress.get("vae_loss"), "vae_psnr_heldout": progress.get("vae_psnr_heldout"),
        "scaling_factor": vae.config.scaling_factor, "latent_unet_loss": unet_loss,
        "parameters": {"vae": count(vae), "latent_unet": count(unet)},
        "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    weights.mkdir(parents=True, exist_ok=True)
    for name in (pocket_latent.VAE_WEIGHTS, pocket_latent.LATENT_UNET_WEIGHTS):
        shutil.copyfile(out / name, weights / name)
    (weights / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")
    return stats
