"""A second judge: a small CNN, trained on ground-truth Pocket World renders, that names an object's kind and colour.

Every method of the course is judged by the pocket CLIP (``generate.judge``): the model Dream Fields optimises, and
trained on the same renders as the diffusion priors that SDS, VSD and Magic3D distil. A method can please such a
judge without making the object (a frame-filling green blob is "a green table" to it). This judge shares nothing
with the priors but the Pocket World: a plain image classifier (convolutions, pooling, a linear read-out: LeCun et
al., "Gradient-based learning applied to document recognition", 1998) trained with cross-entropy on renders of
true objects, so that no method is judged only by a model it optimised.

It knows one more kind than the catalogue, **no object**, learnt from renders of random blobs (one to three
ellipsoids, in every catalogue colour and in greys, some see-through): without it a classifier must name one of the
13 kinds for whatever it sees, and calls a blob the kind it looks least unlike, often with high confidence. It is
validated (``validate``, the model card, ``tests/test_cnn_judge.py``) on renders of held-out objects and on a shape
it never saw in training: the grey blob every SDS run starts from, volume-rendered.

    images (B, 3, 32, 32) in [0, 1]
      → 3 × [conv 3×3, ReLU, conv 3×3, ReLU, max-pool 2]   channels 16, 32, 64; 32² → 16² → 8² → 4²
      → flatten (B, 1024) → linear 256, ReLU → kind logits (B, 14), colour logits (B, 10)

``text3d-edu train-judge`` (``train_cnn_judge``) trains it with the pocket CLIP's augmentation
(``priors.data.augment``: shifts, tints, blur, noise), so that it judges the noisier renders of generated objects
fairly, and ships it as ``weights/cnn_judge.safetensors``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from text3d_edu import sdf, toyworld
from text3d_edu.priors.base import check_images

NO_OBJECT = "no object"
KIND_NAMES = [*toyworld.KINDS, NO_OBJECT]
COLOUR_NAMES = list(toyworld.COLOURS)
WEIGHTS_FILE, STATS_FILE = "cnn_judge.safetensors", "cnn_judge.json"
RESOLUTION = 32


class CNNJudge(nn.Module):
    """Renders (B, 3, 32, 32) in [0, 1] → (kind logits (B, 14), colour logits (B, 10)); see the module docstring."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3, padding=1),
                       nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 4 * 4, 256), nn.ReLU())
        self.kind_head = nn.Linear(256, len(KIND_NAMES))
        self.colour_head = nn.Linear(256, len(COLOUR_NAMES))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        images = check_images(images)
        if images.shape[-2:] != (RESOLUTION, RESOLUTION):
            images = F.interpolate(images, size=RESOLUTION, mode="area")
        features = self.features(images * 2 - 1)  # (B, 256)
        return self.kind_head(features), self.colour_head(features)


# --- data: true objects, and blobs that are none of them --------------------------------------------------------


GREY = "grey"  # a blob colour outside the catalogue: no colour label (its colour loss is ignored)
IGNORE = -100  # F.cross_entropy's ignore_index


def blob_object(seed: int) -> toyworld.PocketObject:
    """One to three overlapping ellipsoids near the centre, of one catalogue colour or (a quarter of them) a grey:
    an object of no kind."""
    rng = random.Random(seed)
    if rng.random() < 0.25:
        colour, albedo = GREY, (rng.uniform(0.3, 0.85),) * 3
    else:
        colour = rng.choice(COLOUR_NAMES)
        albedo = toyworld.COLOURS[colour]
    ellipsoids = [sdf.ellipsoid(tuple(rng.uniform(-0.25, 0.25) for _ in range(3)),
                                tuple(rng.uniform(0.2, 0.6) for _ in range(3))) for _ in range(rng.randint(1, 3))]
    return toyworld.PocketObject(NO_OBJECT, colour, "", seed, (toyworld.Part("blob", sdf.union(*ellipsoids), albedo),))


def render_blobs(n_blobs: int, views_per_blob: int, offset: int) -> dict:
    """Renders of ``blob_object(offset + i)`` from the cameras the priors' data uses, half of them see-through
    (opacity U(0.35, 1) over the background, as a hazy field renders): {"images" uint8 (N, 3, 32, 32), "kind"
    (N,) (all ``NO_OBJECT``), "colour" (N,) (``IGNORE`` for greys)}."""
    from text3d_edu.cameras import sample_cameras
    from text3d_edu.priors.data import ELEVATION_RANGE, RADIUS_RANGE
    from text3d_edu.world_render import render

    images, colours = [], []
    background = torch.tensor(toyworld.BACKGROUND).reshape(1, 3, 1, 1)
    for i in range(n_blobs):
        blob = blob_object(offset + i)
        generator = torch.Generator().manual_seed(offset + i)
        cameras = sample_cameras(views_per_blob, generator, elevation_range=ELEVATION_RANGE,
                                 radius_range=RADIUS_RANGE, resolution=RESOLUTION)
        rgb = render(blob, cameras)["rgb"].permute(0, 3, 1, 2)  # (V, 3, 32, 32)
        opacity = torch.where(torch.rand(views_per_blob, generator=generator) < 0.5, 1.0,
                              0.35 + 0.65 * torch.rand(views_per_blob, generator=generator)).reshape(-1, 1, 1, 1)
        images.append(((background + opacity * (rgb - background)) * 255).round().to(torch.uint8))
        colours += [COLOUR_NAMES.index(blob.colour) if blob.colour != GREY else IGNORE] * views_per_blob
    return {"images": torch.cat(images), "kind": torch.full((len(colours),), KIND_NAMES.index(NO_OBJECT)),
            "colour": torch.tensor(colours)}


def judge_dataset(n_objects: int, views_per_object: int, seed: int = 0, held_out: bool = False,
                  cache_dir: str | Path | None = None, workers: int = 1) -> dict:
    """The priors' renders of ``n_objects`` true objects (``priors.data.render_dataset``, every kind × colour
    equally often) and of 2 · n_objects / 13 blobs ("no object" twice as frequent as each kind: blobs vary more).
    Returns {"images" uint8 (N, 3, 32, 32), "kind" (N,) indices into ``KIND_NAMES``, "colour" (N,)}."""
    from text3d_edu.priors.data import dataset_offset, render_dataset

    objects = render_dataset(n_objects, views_per_object, seed, held_out, cache_dir, progress=True, workers=workers)
    blobs = render_blobs(max(1, 2 * n_objects // len(toyworld.KINDS)), views_per_object,
                         dataset_offset(seed, held_out) + 10_000_000)
    return {key: torch.cat([objects[key], blobs[key]]) for key in ("images", "kind", "colour")}


# --- the verdict ---------------------------------------------------------------------------------------------


@torch.no_grad()
def judge(model: CNNJudge, images: Tensor, prompt: str) -> dict:
    """The CNN's verdict on renders (B, 3, H, W) of ``prompt``, shaped like ``generate.judge``'s: kind_acc and
    colour_acc (the share of views judged the prompt's kind / colour; None off the catalogue), judged_as
    ('red mug' or 'no object' per view) and kind_confidence (the mean probability of the judged kind)."""
    kind_logits, colour_logits = model(images)
    kind_probability, kind = kind_logits.softmax(-1).max(-1)
    colour = colour_logits.argmax(-1)
    judged_as = [KIND_NAMES[k] if KIND_NAMES[k] == NO_OBJECT else f"{COLOUR_NAMES[c]} {KIND_NAMES[k]}"
                 for k, c in zip(kind.tolist(), colour.tolist())]
    verdict = {"kind_acc": None, "colour_acc": None, "judged_as": judged_as,
               "kind_confidence": round(kind_probability.mean().item(), 3)}
    try:
        target = toyworld.parse_caption(prompt)
    except ValueError:
        return verdict
    n = len(judged_as)
    verdict["kind_acc"] = sum(KIND_NAMES[k] == target.kind for k in kind.tolist()) / n
    verdict["colour_acc"] = sum(COLOUR_NAMES[c] == target.colour for c in colour.tolist()) / n
    return verdict


@torch.no_grad()
def validate(model: CNNJudge, seed: int = 0, n_objects: int = 260, views_per_object: int = 4,
             cache_dir: str | Path | None = None) -> dict:
    """The figures of the model card: kind and colour accuracy on renders of held-out objects (other seeds, other
    cameras than training), the share of held-out blobs judged "no object", and the verdict on the grey blob
    ``generate`` starts every SDS run from, volume-rendered from the judge's 8 cameras (a shape never trained on)."""
    from text3d_edu.generate import GenerateConfig, judge_cameras, render_views, start_blob

    data = judge_dataset(n_objects, views_per_object, seed, held_out=True, cache_dir=cache_dir)
    kind_logits, colour_logits = model(data["images"].float() / 255)
    is_object = data["kind"] != KIND_NAMES.index(NO_OBJECT)
    kind_right = kind_logits.argmax(-1) == data["kind"]
    start_logits, _ = model(render_views(start_blob(GenerateConfig()), judge_cameras(RESOLUTION)))
    probabilities = start_logits.softmax(-1)
    return {
        "heldout_kind_acc": round(kind_right[is_object].float().mean().item(), 4),
        "heldout_colour_acc": round((colour_logits.argmax(-1) == data["colour"])[is_object].float().mean().item(),
                                    4),
        "heldout_blobs_no_object": round(kind_right[~is_object].float().mean().item(), 4),
        "heldout_images": int(is_object.sum()),
        "start_blob_judged": [KIND_NAMES[k] for k in probabilities.argmax(-1).tolist()],
        "start_blob_max_kind_probability": round(probabilities[:, :-1].max().item(), 4),
    }


# --- training, saving, loading ---------------------------------------------------------------------------------


def train_cnn_judge(out_dir: str | Path = "runs/cnn_judge", weights_dir: str | Path | None = None,
                    steps: int = 3000, n_objects: int = 1040, views_per_object: int = 8, seed: int = 0,
                    resume: bool = False, threads: int = 1, workers: int = 1, command: str = "",
                    batch_size: int = 128, lr: float = 1e-3, checkpoint_every: int = 500,
                    validation_objects: int = 260) -> dict:
    """Train the judge (cross-entropy on kind + colour, augmented renders, AdamW with a cosine schedule, on the
    shared ``priors.train.training_loop``: tqdm, checkpoints, ``resume``, a stop on NaN), validate it, and write
    ``cnn_judge.safetensors`` and ``cnn_judge.json`` (command, minutes, loss, ``validate``'s figures) into
    ``weights_dir`` (the package's ``weights/`` by default)."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    from text3d_edu.priors import data as pocket_data
    from text3d_edu.priors.pocket_clip import WEIGHTS_DIR
    from text3d_edu.priors.train import save_weights, training_loop

    torch.set_num_threads(threads)
    out = Path(out_dir)
    started = time.time()
    data = judge_dataset(n_objects, views_per_object, seed, cache_dir=out / "data", workers=workers)
    data_minutes = (time.time() - started) / 60
    torch.manual_seed(seed)
    model = CNNJudge()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(100, steps // 10),
                                 num_training_steps=steps)
    n = len(data["kind"])

    def loss_fn(model, generator):
        index = torch.randint(n, (batch_size,), generator=generator)
        images = pocket_data.augment(data["images"][index].float() / 255, generator)  # (B, 3, 32, 32)
        kind_logits, colour_logits = model(images)
        return (F.cross_entropy(kind_logits, data["kind"][index])
                + F.cross_entropy(colour_logits, data["colour"][index], ignore_index=IGNORE))

    started = time.time()
    result = training_loop("cnn_judge", 3, Accelerator(), model, optimizer, lr_scheduler, steps, loss_fn, out, seed,
                           resume, checkpoint_every)
    model = result["model"].eval()
    train_minutes = (time.time() - started) / 60
    stats = {"command": command, "seed": seed, "threads": threads, "steps": steps, "batch_size": batch_size,
             "data": {"objects": n_objects, "views_per_object": views_per_object, "images": n},
             "minutes": {"data": round(data_minutes, 2), "train": round(train_minutes, 2)},
             "loss": round(result["loss"], 4), **validate(model, seed, validation_objects, cache_dir=out / "data"),
             "torch": torch.__version__}
    weights = Path(weights_dir or WEIGHTS_DIR)
    weights.mkdir(parents=True, exist_ok=True)
    save_weights(model, weights / WEIGHTS_FILE, {"width": model.features[0].out_channels})
    (weights / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def load_cnn_judge(weights_dir: str | Path | None = None) -> CNNJudge:
    """The shipped (or ``weights_dir``'s) judge, in eval mode, frozen."""
    from text3d_edu.priors.pocket_clip import WEIGHTS_DIR
    from text3d_edu.priors.train import load_weights

    path = Path(weights_dir or WEIGHTS_DIR) / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no CNN judge weights at {path}: train them with `text3d-edu train-judge` "
                                f"(--weights-dir {path.parent})")
    return load_weights(path, lambda config: CNNJudge(**config)).eval().requires_grad_(False)
