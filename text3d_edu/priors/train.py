"""Training the pocket priors, reproducibly: ``text3d-edu train-pocket`` calls ``train_pocket``.

1. Render the data set (``text3d_edu.priors.data``): balanced kinds × colours, random views, 32×32.
2. Train the pocket CLIP with CLIP's symmetric contrastive loss (Radford et al. 2021, eq. in Fig. 3): for a
   batch of image embeddings I (B, D) and caption embeddings T (B, D), logits = exp(τ)·I Tᵀ (B, B) and
   L = ½ [CE(logits, targets) + CE(logitsᵀ, targets)]; targets spread over identical captions in the batch.
   Images are augmented (noise, blur, tint, grain), 10 % left clean.
3. Freeze it and train the U-Net on DDPM's simplified loss (Ho et al. 2020, eq. 14):
   L = ‖ε − ε_φ(√ᾱ_t x_0 + √(1−ᾱ_t) ε; y, t)‖², t ~ U{0, …, T−1}, with 10 % of captions dropped to "" for
   classifier-free guidance, and an exponential moving average of the weights (the EMA weights are shipped).

The loops follow diffusers' training examples on ``accelerate.Accelerator`` (``accelerate launch`` scales them
unchanged): prepared model / optimiser / LR schedule, ``save_state`` checkpoints, ``load_state`` on --resume.
Batches, captions, augmentations, noise and t are drawn from a generator seeded by (seed, step, process), so a
run is deterministic for a given seed and thread count and resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from text3d_edu.priors import data as pocket_data
from text3d_edu.priors import pocket_clip, pocket_diffusion
from text3d_edu.priors.clip import OPENAI_MEAN, OPENAI_STD

STATS_FILE = "pocket_priors.json"


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def _step_generator(seed: int, phase: int, step: int, process: int) -> torch.Generator:
    """The generator of one training step: everything random in the step comes from it (exact resume)."""
    return torch.Generator().manual_seed(((seed * 7 + phase) * 1_000_003 + step) * 64 + process)


def _latest_checkpoint(folder: Path, phase: str) -> tuple[Path | None, int]:
    found = sorted(folder.glob(f"{phase}-*")) if folder.exists() else []
    return (found[-1], int(found[-1].name.split("-")[-1])) if found else (None, 0)


def save_weights(module: torch.nn.Module, path: Path, config: dict) -> None:
    """Save a state dict as float16 safetensors (half the size; the model is used in float32 after loading)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(config)})


def publish_weights(out: Path, names, weights_dir: str | Path | None, stats_file: str, stats: dict) -> None:
    """Copy the trained safetensors ``names`` from the run folder ``out`` into ``weights_dir`` (the package's
    ``weights/`` by default) and write ``stats`` beside them as ``stats_file`` (the model card's measured record)."""
    weights = Path(weights_dir or pocket_clip.WEIGHTS_DIR)
    weights.mkdir(parents=True, exist_ok=True)
    for name in names:
        (weights / name).write_bytes((out / name).read_bytes())
    (weights / stats_file).write_text(json.dumps(stats, indent=1) + "\n")


def load_weights(path: Path, build):
    """The module ``save_weights`` wrote: ``build(config)`` with the config from the file's metadata, its weights
    loaded back in float32."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    model = build(config)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model


class Phases:
    """The finished phases of a multi-phase training run (DreamStone's SVR then mapper, SDFusion's VQ-VAE then
    U-Net): their minutes and final losses in ``out/progress.json``, so that ``resume`` loads a finished phase's
    weights instead of training it again and the model card's record keeps every phase's time."""

    def __init__(self, out: Path, resume: bool, tag: str, save, load):
        self.file, self.resume, self.tag, self.save, self.load = out / "progress.json", resume, tag, save, load
        progress = json.loads(self.file.read_text()) if resume and self.file.exists() else {}
        self.minutes, self.losses = progress.get("minutes", {}), progress.get("loss", {})

    def add_minutes(self, name: str, started: float) -> None:
        """Count the time since ``started`` (time.time()) towards ``name`` (work redone on resume, e.g. data)."""
        self.minutes[name] = self.minutes.get(name, 0.0) + (time.time() - started) / 60

    def run(self, name: str, path: Path, train):
        """``train() -> (model, final loss)``, saved to ``path``; a finished phase is loaded from there on resume.
        Returns the model as shipped (``load`` of what ``save`` wrote: rounded through float16)."""
        if self.resume and path.exists():
            print(f"[{self.tag}_{name}] resumed: trained weights found at {path}")
            return self.load(path, name)
        started = time.time()
        model, self.losses[name] = train()
        self.save(model, path)
        self.minutes[name] = (time.time() - started) / 60
        self.file.write_text(json.dumps({"minutes": self.minutes, "loss": self.losses}, indent=1))
        return self.load(path, name)


def training_loop(phase: str, phase_id: int, accelerator, model, optimizer, lr_scheduler, steps: int, loss_fn,
          out: Path, seed: int, resume: bool, checkpoint_every: int, ema=None, after_step=None) -> dict:
    """The shared training loop: loss_fn(generator) → scalar loss; returns {"loss": last smoothed loss}."""
    from tqdm.auto import tqdm

    checkpoints = out / "checkpoints"
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    start = 0
    if resume:
        path, start = _latest_checkpoint(checkpoints, phase)
        if path is not None:
            accelerator.load_state(str(path))
            if ema is not None:
                ema.to(accelerator.device)  # its state is loaded on the CPU
            accelerator.print(f"[{phase}] resumed from {path} (step {start})")
    smoothed = float("nan")
    bar = tqdm(range(start, steps), desc=phase, initial=start, total=steps, mininterval=30,
               disable=not accelerator.is_local_main_process, file=sys.stdout)
    for step in bar:
        model.train()
        loss = loss_fn(model, _step_generator(seed, phase_id, step, accelerator.process_index))
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"[{phase}] the loss became {loss.item()} at step {step}; lower the learning "
                                   f"rate, or --resume from the last checkpoint in {checkpoints}")
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        if after_step is not None:
            after_step(accelerator.unwrap_model(model))
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        smoothed = loss.item() if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.1e}", refresh=False)
        if (step + 1) % 250 == 0:
            accelerator.print(f"[{phase}] step {step + 1}/{steps} loss {smoothed:.4f}", flush=True)
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps and accelerator.is_main_process:
            accelerator.save_state(str(checkpoints / f"{phase}-{step + 1:06d}"))
            for old in sorted(checkpoints.glob(f"{phase}-*"))[:-2]:  # keep the last two
                shutil.rmtree(old)
    return {"loss": smoothed, "model": accelerator.unwrap_model(model)}


def train_clip(data: dict, steps: int, seed: int, out: Path, resume: bool, batch_size: int = 128,
               lr: float = 1e-3, checkpoint_every: int = 500):
    """Contrastive training of the pocket CLIP on augmented renders; returns (model, final smoothed loss)."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    accelerator = Accelerator()
    model = pocket_clip.build_clip_model(seed)
    tokenizer = pocket_clip.build_tokenizer()
    mean = torch.tensor(OPENAI_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).reshape(1, 3, 1, 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98), eps=1e-6)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(200, steps // 10),
                                 num_training_steps=steps)
    n = data["images"].shape[0]

    def loss_fn(model, generator):
        index = torch.randint(n, (batch_size,), generator=generator)  # (B,)
        images = pocket_data.augment(data["images"][index].float() / 255, generator)  # (B, 3, 32, 32)
        captions = pocket_data.sample_captions(data, index, generator)
        tokens = tokenizer(captions).to(accelerator.device)  # (B, 20)
        image_f, text_f, scale = model(((images - mean) / std).to(accelerator.device), tokens)  # (B, D) ×2
        logits = scale * image_f @ text_f.T  # (B, B)
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32,
                            device=logits.device)  # identical captions are all positives
        targets = same / same.sum(dim=1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))

    def clamp_temperature(model):  # CLIP clips exp(τ) at 100
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    result = training_loop("clip", 0, accelerator, model, optimizer, lr_scheduler, steps, loss_fn, out, seed, resume,
                   checkpoint_every, after_step=clamp_temperature)
    return result["model"], result["loss"]


def train_denoiser(phase: str, phase_id: int, unet, x_0_of, n: int, data: dict, alphas_cumprod: torch.Tensor,
                   clip_model, steps: int, seed: int, out: Path, resume: bool, batch_size: int = 64,
                   lr: float = 6e-4, ema_decay: float = 0.999, checkpoint_every: int = 500):
    """DDPM training of a text-conditioned U-Net on DDPM's simplified loss (Ho et al. 2020, eq. 14),
    L = ‖ε − ε_φ(√ᾱ_t x_0 + √(1−ᾱ_t) ε; y, t)‖², conditioned on the frozen pocket CLIP's text features, 10 % of
    captions dropped to "" for classifier-free guidance; returns (EMA U-Net, smoothed loss).

    x_0_of(index (B,)) → x_0 (B, C, h, w): the training samples, pixels in [−1, 1] or unit-variance latents; n of them,
    captioned by ``data``; alphas_cumprod: ᾱ_t (T,) of the noise schedule.
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    accelerator = Accelerator()
    device = accelerator.device
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True, foreach=True)
    ema.to(device)
    tokenizer = pocket_clip.build_tokenizer()
    clip_model = clip_model.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(250, steps // 10),
                                 num_training_steps=steps)
    T = len(alphas_cumprod)

    def loss_fn(unet, generator):
        index = torch.randint(n, (batch_size,), generator=generator)
        x_0 = x_0_of(index)
        captions = pocket_data.sample_captions(data, index, generator, drop_probability=0.1)
        noise = torch.randn(x_0.shape, generator=generator)  # ε
        t = torch.randint(0, T, (batch_size,), generator=generator)
        a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
        x_t = a.sqrt() * x_0 + (1 - a).sqrt() * noise  # DDPM eq. 4
        with torch.no_grad():
            hidden, pooled = pocket_clip.text_features(clip_model, tokenizer(captions).to(device))
        eps = unet(x_t.to(device), t.to(device), encoder_hidden_states=hidden, class_labels=pooled).sample
        return F.mse_loss(eps, noise.to(device))  # DDPM eq. 14

    result = training_loop(phase, phase_id, accelerator, unet, optimizer, lr_scheduler, steps, loss_fn, out, seed,
                           resume, checkpoint_every, ema=ema)
    ema.copy_to(result["model"].parameters())
    return result["model"], result["loss"]


def train_unet(data: dict, clip_model, steps: int, seed: int, out: Path, resume: bool, **kwargs):
    """The pocket pixel-space U-Net on ``data``'s 32×32 renders (``train_denoiser``); returns (EMA U-Net, loss)."""
    images = data["images"]  # (N, 3, 32, 32) uint8

    def x_0_of(index):
        return images[index].float() / 255 * 2 - 1  # (B, 3, 32, 32) in [−1, 1]

    return train_denoiser("unet", 1, pocket_diffusion.build_unet(seed), x_0_of, images.shape[0], data,
                          pocket_diffusion.build_scheduler().alphas_cumprod, clip_model, steps, seed, out, resume,
                          **kwargs)


def _round_to_half(model: torch.nn.Module) -> torch.nn.Module:
    """Round weights through float16, as they will be shipped, so the U-Net trains on the shipped features."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def _heldout_clip_accuracy(clip_model, seed: int, n_objects: int, workers: int = 1) -> dict:
    """Zero-shot kind / colour accuracy on a small held-out set (other objects, other views)."""
    from text3d_edu.priors.clip import OpenCLIPPrior
    from text3d_edu.toyworld import COLOURS, catalogue_captions

    held = pocket_data.render_dataset(n_objects, 2, seed=seed, held_out=True, workers=workers)
    prior = OpenCLIPPrior(clip_model, pocket_clip.build_tokenizer(), pocket_clip.IMAGE_SIZE)
    choice = prior.classify(held["images"].float() / 255, catalogue_captions())  # catalogue is kind-major
    kind, colour = choice // len(COLOURS), choice % len(COLOURS)
    return {"kind_acc": (kind == held["kind"]).float().mean().item(),
            "colour_acc": (colour == held["colour"]).float().mean().item(), "n": len(choice)}


def train_pocket(out_dir: str | Path = "runs/pocket_priors", weights_dir: str | Path | None = None,
                 clip_steps: int = 1500, unet_steps: int = 3200, seed: int = 0, resume: bool = False,
                 n_objects: int = 2080, views_per_object: int = 12, threads: int = 2, workers: int = 1,
                 heldout_objects: int = 130, checkpoint_every: int = 500, command: str = "") -> dict:
    """Render the data, train the CLIP then the U-Net, and write both as safetensors into ``weights_dir``
    (the package's ``weights/`` by default) with ``pocket_priors.json`` (command, sizes, timings, losses)."""
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
    data = pocket_data.render_dataset(n_objects, views_per_object, seed, cache_dir=out / "data", progress=True,
                                     workers=workers)
    done("data", started)

    clip_file = out / pocket_clip.CLIP_WEIGHTS
    if resume and clip_file.exists():
        clip_model = pocket_clip.load_clip_model(out)
        print(f"[clip] resumed: trained weights found at {clip_file}")
    else:
        started = time.time()
        clip_model, clip_loss = train_clip(data, clip_steps, seed, out, resume, checkpoint_every=checkpoint_every)
        save_weights(clip_model, clip_file, pocket_clip.POCKET_CLIP_CONFIG)
        clip_model = _round_to_half(clip_model).eval()
        heldout = _heldout_clip_accuracy(clip_model, seed, heldout_objects, workers)
        done("clip", started, clip_loss=clip_loss, clip_heldout=heldout)
        print(f"[clip] held-out zero-shot: {progress['clip_heldout']}", flush=True)

    started = time.time()
    unet, unet_loss = train_unet(data, clip_model, unet_steps, seed, out, resume, checkpoint_every=checkpoint_every)
    save_weights(unet, out / pocket_diffusion.UNET_WEIGHTS, pocket_diffusion.POCKET_UNET_CONFIG)
    done("unet", started, unet_loss=unet_loss)

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    stats = {
        "command": command,
        "seed": seed, "clip_steps": clip_steps, "unet_steps": unet_steps, "threads": threads,
        "data": {"objects": n_objects, "views_per_object": views_per_object, "images": int(data["images"].shape[0]),
                 "resolution": pocket_data.RESOLUTION},
        "minutes": {**{k: round(v, 2) for k, v in minutes.items()}, "total": round(sum(minutes.values()), 2)},
        "clip_loss": progress.get("clip_loss"), "unet_loss": unet_loss, "clip_heldout": progress.get("clip_heldout"),
        "parameters": {"clip": count(clip_model), "clip_token_embedding": clip_model.token_embedding.weight.numel(),
                       "unet": count(unet)},
        "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    weights.mkdir(parents=True, exist_ok=True)
    for name in (pocket_clip.CLIP_WEIGHTS, pocket_diffusion.UNET_WEIGHTS):
        shutil.copyfile(out / name, weights / name)
    (weights / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")
    return stats
