"""Training Point-E's base model and upsampler on the Pocket World; loading the shipped weights.

Both denoisers learn DDPM's simplified loss (``diffusion.training_loss``) on surface clouds of the pairs of
``point_e.data``, conditioned on the pocket CLIP's embedding of one random view of the same object, dropped 10 %
of the time. Each step draws a fresh random subset of every cloud's points (the clouds are sets): the base model
learns K random surface points; the upsampler learns K more given K₀ others as its coarse cloud (the official
upsampler learns 3072 points given 1024, with the ground-truth coarse cloud in training, as here).

The loop is the pocket priors' (``priors.train.training_loop``: Accelerate, tqdm, NaN stop, checkpoints every
``checkpoint_every`` steps, exact ``--resume``); the exponential moving average of the weights is shipped as
float16 safetensors with each model's sizes in its metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from text3d_edu.point_e.diffusion import make_scheduler, training_loss
from text3d_edu.point_e.model import DenoiserConfig, PointDenoiser
from text3d_edu.priors.train import load_weights, publish_weights, save_weights, training_loop

WEIGHTS = {"base": "point_e_base.safetensors", "upsampler": "point_e_upsampler.safetensors"}
PHASE_IDS = {"base": 10, "upsampler": 11}  # the training generators' phase numbers, apart from the priors' 0 and 1


def random_subsets(clouds: torch.Tensor, index: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` distinct random points of each cloud clouds[index]: (N, P, 6), (B,) → (B, size, 6)."""
    picked = clouds[index]  # (B, P, 6)
    order = torch.argsort(torch.rand(picked.shape[:2], generator=generator), dim=1)[:, :size]  # (B, size)
    return picked.gather(1, order[..., None].expand(-1, -1, picked.shape[-1]))


def train_denoiser(name: str, config: DenoiserConfig, data: dict, steps: int, seed: int, out: Path, resume: bool,
                   batch_size: int = 32, lr: float = 5e-4, ema_decay: float = 0.999,
                   checkpoint_every: int = 500) -> tuple[PointDenoiser, float]:
    """Train the ``name`` ("base" or "upsampler") denoiser of sizes ``config``; returns (EMA model, smoothed loss)."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    if config.points + config.coarse_points > data["clouds"].shape[1]:
        raise ValueError(f"the data's clouds have {data['clouds'].shape[1]} points, fewer than the "
                         f"{config.points} + {config.coarse_points} the {name} model needs: build the data with "
                         f"more points")
    accelerator = Accelerator()
    torch.manual_seed(seed)
    model = PointDenoiser(config)
    ema = EMAModel(model.parameters(), decay=ema_decay, use_ema_warmup=True, foreach=True)
    ema.to(accelerator.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(250, steps // 10),
                                 num_training_steps=steps)
    scheduler = make_scheduler()
    n_objects, views = data["features"].shape[:2]

    def loss_fn(model, generator):
        index = torch.randint(n_objects, (batch_size,), generator=generator)  # (B,) objects
        view = torch.randint(views, (batch_size,), generator=generator)  # (B,) which render conditions each
        cloud = random_subsets(data["clouds"], index, config.coarse_points + config.points, generator)
        coarse = cloud[:, :config.coarse_points] if config.coarse_points else None  # (B, K₀, 6)
        x_0 = cloud[:, config.coarse_points:]  # (B, K, 6)
        device = accelerator.device
        return training_loss(model, x_0.to(device), data["features"][index, view].to(device), generator, scheduler,
                             None if coarse is None else coarse.to(device))

    result = training_loop(f"point_e_{name}", PHASE_IDS[name], accelerator, model, optimizer, lr_scheduler, steps,
                           loss_fn, out, seed, resume, checkpoint_every, ema=ema)
    ema.copy_to(result["model"].parameters())
    return result["model"].eval(), result["loss"]


def save_denoiser(model: PointDenoiser, path: str | Path) -> None:
    """The model as float16 safetensors, its ``DenoiserConfig`` in the metadata."""
    save_weights(model, Path(path), asdict(model.config))


def load_denoiser(path: str | Path) -> PointDenoiser:
    """A denoiser saved by ``save_denoiser`` (float32, eval mode); a clear error when the file is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Point-E weights at {path}: train them with `text3d-edu train-pointe`")
    model = load_weights(path, lambda config: PointDenoiser(DenoiserConfig(**config)))
    return model.eval().requires_grad_(False)


# the default sizes, the recipe that trains in an hour on a 2-core CPU; the shipped weights are wider and deeper
# (`--width 128 --layers 4`, trained on a GPU: the model card compares them)
BASE = DenoiserConfig(points=128, width=64, layers=3, heads=4)
UPSAMPLER = DenoiserConfig(points=384, coarse_points=128, width=64, layers=3, heads=4)
# clouds per step: the upsampler's 512 tokens cost ~7× the base model's 130 per cloud (7.9 vs 1.1 steps/s at 32 on
# one thread of this CPU), so it sees 16 clouds a step to fit the whole training in an hour
BATCH_SIZE = {"base": 32, "upsampler": 16}
STATS_FILE = "point_e.json"


def train_point_e(out_dir: str | Path = "runs/point_e", weights_dir: str | Path | None = None,
                  base_steps: int = 10_000, upsampler_steps: int = 4_000, n_objects: int = 1040,
                  views_per_object: int = 4, seed: int = 0, resume: bool = False, threads: int = 1,
                  workers: int = 1, checkpoint_every: int = 500, command: str = "", width: int = BASE.width,
                  layers: int = BASE.layers) -> dict:
    """Build the pairs, train the base model then the upsampler, and write both as safetensors into
    ``weights_dir`` (the package's ``weights/`` by default) with ``point_e.json`` (command, sizes, minutes, losses).
    ``width`` and ``layers`` size both transformers (the shipped ones: ``BASE``, ``UPSAMPLER``).
    With ``resume``, a finished model is loaded from ``out_dir`` and an unfinished one continues from its last
    checkpoint."""
    import time

    from text3d_edu.point_e.data import cloud_dataset

    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress_file = out / "progress.json"  # minutes and losses of the finished phases, for --resume
    progress = json.loads(progress_file.read_text()) if resume and progress_file.exists() else {}
    minutes, losses = progress.get("minutes", {}), progress.get("loss", {})
    base, upsampler = (replace(c, width=width, layers=layers) for c in (BASE, UPSAMPLER))
    started = time.time()
    data = cloud_dataset(n_objects, views_per_object, points=base.points + upsampler.points, seed=seed,
                         cache_dir=out / "data", workers=workers, progress=True)
    minutes["data"] = minutes.get("data", 0.0) + (time.time() - started) / 60
    for name, config, steps in (("base", base, base_steps), ("upsampler", upsampler, upsampler_steps)):
        path = out / WEIGHTS[name]
        if resume and path.exists():
            print(f"[point_e_{name}] resumed: trained weights found at {path}")
            continue
        started = time.time()
        model, losses[name] = train_denoiser(name, config, data, steps, seed, out, resume,
                                             batch_size=BATCH_SIZE[name], checkpoint_every=checkpoint_every)
        save_denoiser(model, path)
        minutes[name] = (time.time() - started) / 60
        progress_file.write_text(json.dumps({"minutes": minutes, "loss": losses}, indent=1))
    stats = {"command": command, "seed": seed, "threads": threads,
             "steps": {"base": base_steps, "upsampler": upsampler_steps}, "batch_size": BATCH_SIZE,
             "data": {"objects": n_objects, "views_per_object": views_per_object,
                      "points": base.points + upsampler.points},
             "sizes": {"base": asdict(base), "upsampler": asdict(upsampler)},
             "minutes": {k: round(v, 2) for k, v in minutes.items()}, "loss": losses,
             "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    publish_weights(out, WEIGHTS.values(), weights_dir, STATS_FILE, stats)
    return stats


def load_point_e(weights_dir: str | Path | None = None) -> tuple[PointDenoiser, PointDenoiser]:
    """The shipped (or ``weights_dir``'s) base model and upsampler."""
    from text3d_edu.priors.pocket_clip import WEIGHTS_DIR

    folder = Path(weights_dir or WEIGHTS_DIR)
    return load_denoiser(folder / WEIGHTS["base"]), load_denoiser(folder / WEIGHTS["upsampler"])
