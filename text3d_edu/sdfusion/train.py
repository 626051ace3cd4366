"""Training SDFusion on the Pocket World, reproducibly: ``text3d-edu train-sdfusion`` calls ``train_sdfusion``.

1. Build the data (``data.sdf_dataset``): truncated SDF grids 32³, renders' pocket-CLIP image features, captions.
2. Train the 3D VQ-VAE on L_VQ (``vqvae.vqvae_loss``); measure the latent's standard deviation (its scale).
3. Encode every grid, and every grid cut to each half (the partial-shape condition), once.
4. Train the latent U-Net on the latent-diffusion loss ‖ε − ε_θ(z_t, t, c)‖² with the text, image and partial
   conditions each dropped independently (``DROP``), an EMA of the weights shipped.

Both phases run ``priors.train.training_loop`` (Accelerate, checkpoints, exact --resume, a stop with a message on a
non-finite loss) with ``dreamstone._training_setup``'s AdamW and cosine schedule.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from text3d_edu.dreamstone import _training_setup
from text3d_edu.priors.train import Phases, load_weights, publish_weights, save_weights, training_loop
from text3d_edu.sdfusion import pipeline
from text3d_edu.sdfusion.data import HALVES, sdf_dataset
from text3d_edu.sdfusion.sampler import T, add_noise, alphas_cumprod
from text3d_edu.sdfusion.unet import LatentUNet, UNetConfig
from text3d_edu.sdfusion.vqvae import VQVAE, VQVAEConfig, vqvae_loss

PHASE_IDS = {"vqvae": 30, "unet": 31}  # training generators' phase numbers, apart from the other models'
# each condition's probability of being dropped (∅) in training. Measured (held-out, 26 prompts / 26 completions,
# U-Net 2000 steps): all 0.5 gave text → shape kind 0.23 (with unscaled features); text 0.2 / image 0.6 / partial
# 0.6: kind 1.0 but completion IoU 0.71; partial 0.3: kind 0.81-0.85, completion 0.76-0.77; partial 0.45: 0.81 / 0.75.
# The text is dropped least: alone it is the weakest condition, and text-only is the question asked most often
DROP = {"text": 0.2, "image": 0.6, "partial": 0.3}


def train_vqvae(config: VQVAEConfig, sdf: torch.Tensor, steps: int, seed: int, out: Path, resume: bool,
                batch_size: int = 16, lr: float = 1e-3, checkpoint_every: int = 250) -> tuple[VQVAE, float]:
    """The VQ-VAE on random batches of the SDF grids (N, R, R, R); returns (model with its latent statistics μ, σ
    (``set_latent_statistics``), loss)."""
    torch.manual_seed(seed)
    model = VQVAE(config)
    accelerator, optimizer, lr_scheduler = _training_setup(model, lr, steps)

    def loss_fn(model, generator):
        batch = sdf[torch.randint(sdf.shape[0], (batch_size,), generator=generator)]
        return vqvae_loss(model, batch.to(accelerator.device))

    result = training_loop("sdfusion_vqvae", PHASE_IDS["vqvae"], accelerator, model, optimizer, lr_scheduler, steps,
                           loss_fn, out, seed, resume, checkpoint_every)
    return set_latent_statistics(result["model"].cpu().eval(), sdf), result["loss"]


@torch.no_grad()
def set_latent_statistics(vqvae: VQVAE, sdf: torch.Tensor) -> VQVAE:
    """Store μ and σ (3, d, d, d) of the latents of the grids (N, R, R, R) in the VQ-VAE; σ at least 0.01 (a cell
    whose latent never changes is not amplified)."""
    z = torch.cat([vqvae.encode(chunk) for chunk in sdf.split(64)])  # (N, 3, d, d, d)
    vqvae.latent_mean.copy_(z.mean(dim=0))
    vqvae.latent_std.copy_(z.std(dim=0).clamp_min(0.01))
    return vqvae


def partial_latents(vqvae: VQVAE, sdf: torch.Tensor) -> torch.Tensor:
    """Every grid (N, R, R, R) cut to each half of ``HALVES``: the partial conditions (N, 6, 4, d, d, d)."""
    return torch.stack([pipeline.partial_condition(vqvae, sdf, keep)[0] for keep in HALVES], dim=1)


def train_unet(config: UNetConfig, z: torch.Tensor, partial: torch.Tensor, text: torch.Tensor, image: torch.Tensor,
               steps: int, seed: int, out: Path, resume: bool, batch_size: int = 32, lr: float = 1e-3,
               ema_decay: float = 0.999, checkpoint_every: int = 250) -> tuple[LatentUNet, float]:
    """The latent U-Net: z (N, 3, d, d, d) standardised latents, partial (N, 6, 4, d, d, d) conditions, text
    (N, E) caption features, image (N, V, E) render features; returns (EMA U-Net, smoothed loss)."""
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    unet = LatentUNet(config)
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True, foreach=True)
    accelerator, optimizer, lr_scheduler = _training_setup(unet, lr, steps)
    device = accelerator.device  # the data goes where Accelerate put the U-Net (a GPU when there is one)
    a_bar, z, partial, text, image = (x.to(device) for x in (alphas_cumprod(), z, partial, text, image))
    n, views = image.shape[:2]

    def loss_fn(unet, generator):
        index = torch.randint(n, (batch_size,), generator=generator)  # (B,)
        keep = {name: (torch.rand(batch_size, generator=generator) >= p).float().to(device) for name, p in DROP.items()}
        half = torch.randint(len(HALVES), (batch_size,), generator=generator)
        view = torch.randint(views, (batch_size,), generator=generator)
        noise = torch.randn(z[index].shape, generator=generator).to(device)  # ε
        t = torch.randint(0, T, (batch_size,), generator=generator).to(device)
        z_t = add_noise(z[index], noise, t, a_bar)
        eps = unet(z_t, t, text=text[index] * keep["text"][:, None], image=image[index, view] * keep["image"][:, None],
                   partial=partial[index, half] * keep["partial"][:, None, None, None, None])
        return F.mse_loss(eps, noise)  # SDFusion's L(θ, {φ_i})

    result = training_loop("sdfusion_unet", PHASE_IDS["unet"], accelerator, unet, optimizer, lr_scheduler, steps,
                           loss_fn, out, seed, resume, checkpoint_every, ema=ema)
    ema.copy_to(result["model"].parameters())
    return result["model"].cpu().eval(), result["loss"]


def save_model(model: VQVAE | LatentUNet, path: str | Path) -> None:
    """The model as float16 safetensors, its config in the metadata (the VQ-VAE's latent μ, σ are buffers)."""
    save_weights(model, Path(path), asdict(model.config))


def load_model(path: str | Path, kind: str) -> VQVAE | LatentUNet:
    """A model ``save_model`` wrote (``kind``: "vqvae" or "unet"), float32, eval, frozen; a clear error when the file
    is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SDFusion {kind} weights at {path}: train them with `text3d-edu train-sdfusion`")
    build = {"vqvae": lambda c: VQVAE(VQVAEConfig(**c)), "unet": lambda c: LatentUNet(UNetConfig(**c))}[kind]
    return load_weights(path, build).eval().requires_grad_(False)


def load_sdfusion(weights_dir: str | Path | None = None) -> tuple[VQVAE, LatentUNet]:
    """The shipped (or ``weights_dir``'s) VQ-VAE and latent U-Net."""
    from text3d_edu.priors.pocket_clip import WEIGHTS_DIR

    folder = Path(weights_dir or WEIGHTS_DIR)
    return load_model(folder / pipeline.WEIGHTS["vqvae"], "vqvae"), load_model(folder / pipeline.WEIGHTS["unet"],
                                                                              "unet")


def train_sdfusion(out_dir: str | Path = "runs/sdfusion", weights_dir: str | Path | None = None,
                   vqvae_steps: int = 3000, unet_steps: int = 2000, n_objects: int = 1040, heldout_objects: int = 104,
                   seed: int = 0, resume: bool = False, threads: int = 1, workers: int = 1,
                   checkpoint_every: int = 250, command: str = "", vqvae_config: VQVAEConfig | None = None,
                   unet_config: UNetConfig | None = None, completions: int | None = 26,
                   prompts: list[str] | None = None) -> dict:
    """``text3d-edu train-sdfusion``: the data, the VQ-VAE, the latents, the U-Net; writes both as safetensors into
    ``weights_dir`` (the package's ``weights/`` by default) with ``sdfusion.json`` (command, sizes, minutes, losses
    and ``pipeline.evaluate``'s figures on ``heldout_objects`` held-out objects, ``completions`` of them completed,
    and ``prompts``, every kind in red and blue by default).
    With ``resume``, a finished model is loaded from ``out_dir`` and an unfinished one continues from its last
    checkpoint."""
    from text3d_edu.priors import load_clip

    torch.set_num_threads(threads)
    vqvae_config, unet_config = vqvae_config or VQVAEConfig(), unet_config or UNetConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases(out, resume, "sdfusion", save_model, load_model)
    clip = load_clip("pocket")
    started = time.time()
    data = sdf_dataset(n_objects, seed, clip=clip, cache_dir=out / "data", workers=workers, progress=True)
    phases.add_minutes("data", started)

    vqvae = phases.run("vqvae", out / pipeline.WEIGHTS["vqvae"], lambda: train_vqvae(
        vqvae_config, data["sdf"], vqvae_steps, seed, out, resume, checkpoint_every=checkpoint_every))
    started = time.time()
    z, partial = pipeline.encode(vqvae, data["sdf"]), partial_latents(vqvae, data["sdf"])
    text = pipeline.text_condition(clip, data["captions"])
    phases.minutes["latents"] = (time.time() - started) / 60
    unet = phases.run("unet", out / pipeline.WEIGHTS["unet"], lambda: train_unet(
        unet_config, z, partial, text, data["features"], unet_steps, seed, out, resume,
        checkpoint_every=checkpoint_every))
    heldout = sdf_dataset(heldout_objects, seed, held_out=True, clip=clip, cache_dir=out / "data", workers=workers)
    stats = {"command": command, "seed": seed, "threads": threads,
             "steps": {"vqvae": vqvae_steps, "unet": unet_steps}, "drop": DROP,
             "data": {"objects": n_objects, "heldout_objects": heldout_objects, "grid": vqvae_config.grid},
             "sizes": {"vqvae": asdict(vqvae_config), "unet": asdict(unet_config),
                       "latent_std_mean": round(vqvae.latent_std.mean().item(), 4)},
             "parameters": {"vqvae": sum(p.numel() for p in vqvae.parameters()),
                            "unet": sum(p.numel() for p in unet.parameters())},
             "minutes": {k: round(v, 2) for k, v in phases.minutes.items()},
             "train_minutes_cpu": round(sum(phases.minutes.values()), 2), "loss": phases.losses,
             "sample_config": asdict(pipeline.SampleConfig()),
             "measured": pipeline.evaluate(vqvae, unet, clip, heldout, seed=seed, prompts=prompts,
                                          completions=completions),
             "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    publish_weights(out, pipeline.WEIGHTS.values(), weights_dir, pipeline.STATS_FILE, stats)
    return stats
