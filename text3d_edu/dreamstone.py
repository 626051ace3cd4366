"""DreamStone (Zhengzhe Liu, Peng Dai, Ruihui Li, Xiaojuan Qi, Chi-Wing Fu: "DreamStone: Image as a Stepping Stone
for Text-Guided 3D Shape Generation", TPAMI 2023, https://arxiv.org/abs/2303.15181; its conference version is "ISS:
Image as Stepping Stone for Text-Guided 3D Shape Generation", ICLR 2023, https://arxiv.org/abs/2209.04145): text →
shape with no paired text at all, using the image as a stepping stone between CLIP's text space and a 3D shape space.

Stage 1 — align CLIP's *image* space with the shape space of a single-view reconstruction (SVR) model:

    image I_i ──E_S──▶ shape code ──D──▶ SDF d(x) and colour c(x) on a grid   (the SVR model, trained on renders ↔
                                                                               Pocket World SDF grids)
    image I_i ──f_I (frozen pocket CLIP)──▶ f_{I,i} ──M──▶ code                (the CLIP2Shape mapper)

    L_M = Σ_i ‖E_S(I_i) − M(f_{I,i})‖²₂                                         (the seed's L_M; E_S frozen)

  The official code (liuzhengzhe/DreamStone-ISS; in the form issue 14 quotes) mixes noise into the image features
  before M, f ← normalize(0.25·f + 0.75·n/‖n‖), n ~ N(0, I), so that M also maps features that are not exactly
  image features — text features included (``mix_noise``). The paper also fine-tunes D with a background loss
  L_bg = Σ_p ‖D_c(p) − 1‖² on pixels whose rays miss the shape, for its white-background renders; our decoder is
  trained on the SDF grids directly, so there is no L_bg.

Text → shape: feed the pocket CLIP's *text* feature f_T (unit norm) to M, decode, mesh by marching cubes.

Stage 2 — per prompt T, fine-tune M to M' only (D and CLIP frozen) with the CLIP consistency loss between T and
m renders R_i of the decoded shape from random cameras (seed: L_C = Σ_i ⟨f_T · E_I(R_i)/‖E_I(R_i)‖⟩, a similarity
to *raise*; we minimise its negative mean). The renders are differentiable: volume rendering (``rendering``) of the
decoded SDF turned into a density as in VolSDF (Yariv et al. 2021, eq. 2), σ(x) = α Ψ_β(−d(x)), α = 1/β, with Ψ_β
the CDF of a zero-mean Laplace distribution of scale β.

Where ours differs: the paper's SVR model is DVR (an implicit occupancy + texture decoder trained on ShapeNet
renders); ours is a small CNN E_S and a 3D transposed-convolution decoder D to a 24³ grid (trains in minutes on one
CPU thread); our CLIP is the pocket CLIP (64-d features, 32×32 images).

Measured (``train_dreamstone``'s defaults, one thread of a shared 2-core CPU; 26 prompts = 13 kinds × red, blue):
stage 1 trains in 25 min (data 1.5, SVR 23.7 at 0.35 s/step, mapper 0.1). The pocket CLIP's modality gap
‖mean f_I − mean f_T‖ = 0.31 (matching pairs' cosine 0.78). Held-out renders → E_S → D: nearest kind by IoU 0.88
(the true grids themselves score 0.95: forms and jitter); held-out f_I → M → D: 0.77 with noise mixing, 0.92
without. Text → shape, nearest kind by IoU / colour: noise mixing 0.85 / 0.77, without 0.81 / 0.73; after stage 2
(``Stage2Config``, 10.6 s of CPU per prompt) 0.96 / 0.85. The CNN judge (``cnn_judge``, which shares nothing with
the pocket CLIP) on 8 views: kind 0.76 → 0.88, colour 0.94 → 1.00 from stage 1 to stage 2. Stage 2 on *unshaded*
renders made things worse (0.81 / 0.54): the CLIP pulled the albedo towards the shaded colours it was trained on.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from text3d_edu import toyworld
from text3d_edu.cameras import sample_cameras
from text3d_edu.fields import GridField, trilinear
from text3d_edu.priors import data as pocket_data
from text3d_edu.priors.train import Phases, load_weights, publish_weights, save_weights, training_loop
from text3d_edu.rendering import render_image
from text3d_edu.world_render import lighting, sdf_grid

TRUNCATION = 0.2  # δ: the decoder's SDF lives in [−δ, δ] (a truncated SDF, as in DeepSDF / TSDF fusion)
WEIGHTS = {"svr": "dreamstone_svr.safetensors", "mapper": "dreamstone_mapper.safetensors"}
STATS_FILE = "dreamstone.json"
PHASE_IDS = {"svr": 20, "mapper": 21}  # training generators' phase numbers, apart from the other models'
EVAL_COLOURS = ("red", "blue")  # the acceptance prompts: every kind in these two colours


@dataclass
class DreamStoneConfig:
    """Sizes of the SVR model (E_S, D) and of the mapper M."""

    grid: int = 24  # R: the decoded SDF / colour grid is R³ over [−1, 1]³ (a multiple of 8)
    code_dim: int = 128  # the shape code E_S(I) = M(f)
    width: int = 32  # w: channels of E_S's first convolution, doubled at each scale (D mirrors it, ending at w/2)
    clip_dim: int = 64  # E: the CLIP features' size (the pocket CLIP's embedding)
    mapper_width: int = 256
    image_size: int = 32  # the renders E_S reads (the pocket CLIP's size)

    def __post_init__(self):
        if self.grid % 8 or self.grid < 8:
            raise ValueError(f"grid must be a multiple of 8 (D upsamples 3 times by 2), got {self.grid}")
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (E_S downsamples 3 times by 2), "
                             f"got {self.image_size}")


# --- the models ----------------------------------------------------------------------------------------------


class ShapeEncoder(nn.Module):
    """E_S: a render (B, 3, H, W) in [0, 1] → a shape code (B, code_dim); three stride-2 convolutions and a linear."""

    def __init__(self, config: DreamStoneConfig):
        super().__init__()
        w = config.width
        self.convs = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.GELU(),  # (B, w, H/2, W/2)
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.GELU(),  # (B, 2w, H/4, W/4)
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.GELU())  # (B, 4w, H/8, W/8)
        self.head = nn.Linear(4 * w * (config.image_size // 8) ** 2, config.code_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.convs(images * 2 - 1).flatten(1))


class ShapeDecoder(nn.Module):
    """D: a shape code (B, code_dim) → SDF d (B, R, R, R) in [−δ, δ] and colour c (B, 3, R, R, R) in [0, 1], both
    indexed [x, y, z] over [−1, 1]³ like ``world_render.sdf_grid``; a linear to (4w, R/8)³ and three transposed
    3D convolutions that double the resolution."""

    def __init__(self, config: DreamStoneConfig):
        super().__init__()
        w, self.start = config.width, config.grid // 8
        self.project = nn.Linear(config.code_dim, 4 * w * self.start ** 3)
        self.deconvs = nn.Sequential(
            nn.GELU(), nn.ConvTranspose3d(4 * w, 2 * w, 4, 2, 1),  # (B, 2w, R/4, R/4, R/4)
            nn.GELU(), nn.ConvTranspose3d(2 * w, w, 4, 2, 1),  # (B, w, R/2, …)
            nn.GELU(), nn.ConvTranspose3d(w, w // 2, 4, 2, 1),  # (B, w/2, R, …)
            nn.GELU(), nn.Conv3d(w // 2, 4, 3, 1, 1))  # (B, 4, R, R, R): d and c logits

    def forward(self, code: Tensor) -> tuple[Tensor, Tensor]:
        s = self.start
        h = self.deconvs(self.project(code).reshape(code.shape[0], -1, s, s, s))  # (B, 4, R, R, R)
        return TRUNCATION * torch.tanh(h[:, 0]), torch.sigmoid(h[:, 1:])


class SVRModel(nn.Module):
    """The single-view reconstruction model: D(E_S(I))."""

    def __init__(self, config: DreamStoneConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = ShapeEncoder(config), ShapeDecoder(config)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Renders (B, 3, H, W) → SDF (B, R, R, R), colour (B, 3, R, R, R)."""
        return self.decoder(self.encoder(images))


class Mapper(nn.Module):
    """M: CLIP features f (B, E) (unit norm) → shape codes (B, code_dim), an MLP."""

    def __init__(self, config: DreamStoneConfig):
        super().__init__()
        self.config = config
        h = config.mapper_width
        self.net = nn.Sequential(nn.Linear(config.clip_dim, h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
                                 nn.Linear(h, config.code_dim))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


# --- the data ------------------------------------------------------------------------------------------------


def grid_points(resolution: int) -> Tensor:
    """The vertices of an R³ grid over [−1, 1]³, indexed [x, y, z] like ``sdf_grid``: (R³, 3)."""
    axis = torch.linspace(-1, 1, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def shape_target(obj: toyworld.PocketObject, resolution: int) -> tuple[Tensor, Tensor]:
    """An object's SVR target: its SDF truncated to [−δ, δ] (R, R, R) and its albedo (3, R, R, R) (the colour of the
    nearest part, the colour the object *is*)."""
    r = resolution
    albedo = obj.albedo(grid_points(r)).T.reshape(3, r, r, r)
    return sdf_grid(obj, r).clamp(-TRUNCATION, TRUNCATION), albedo


def shape_dataset(n_objects: int, views_per_object: int = 4, resolution: int = 24, seed: int = 0,
                  held_out: bool = False, clip=None, cache_dir: str | Path | None = None, workers: int = 1,
                  progress: bool = False) -> dict:
    """Renders ↔ shapes of ``n_objects`` Pocket World objects (``priors.data.dataset_object``: balanced kinds ×
    colours, random forms and jitter).

    Returns {"images": uint8 (N, V, 3, 32, 32) the pocket priors' renders from random cameras, "features": (N, V, E)
    the frozen pocket CLIP's image embeddings f_I of those renders, "sdf": (N, R, R, R) truncated SDF grids,
    "albedo": (N, 3, R, R, R), "kind" / "colour": long (N,)}. Deterministic in its arguments; cached as a .pt file
    in ``cache_dir`` (generated, never committed).
    """
    name = (f"dreamstone_{'heldout' if held_out else 'train'}_{n_objects}x{views_per_object}_r{resolution}_s{seed}"
            f"_v{pocket_data.DATA_VERSION}.pt")
    if cache_dir is not None and (Path(cache_dir) / name).exists():
        return torch.load(Path(cache_dir) / name)
    if clip is None:
        from text3d_edu.priors import load_clip

        clip = load_clip("pocket")
    renders = pocket_data.render_dataset(n_objects, views_per_object, seed, held_out, cache_dir, progress, workers)
    offset = pocket_data.dataset_offset(seed, held_out)
    targets = [shape_target(pocket_data.dataset_object(i, offset), resolution)
               for i in tqdm(range(n_objects), desc="SDF grids", mininterval=10, disable=not progress)]
    images = renders["images"]  # (N·V, 3, 32, 32) uint8, object-major
    with torch.no_grad():
        features = torch.cat([clip.encode_image(chunk.float() / 255) for chunk in images.split(512)])  # (N·V, E)
    data = {"images": images.reshape(n_objects, views_per_object, *images.shape[1:]),
            "features": features.reshape(n_objects, views_per_object, -1),
            "sdf": torch.stack([t[0] for t in targets]), "albedo": torch.stack([t[1] for t in targets]),
            "kind": renders["kind"][::views_per_object], "colour": renders["colour"][::views_per_object]}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        torch.save(data, Path(cache_dir) / name)
    return data


# --- stage 1: the SVR loss and the mapper loss L_M -----------------------------------------------------------


def svr_loss(model: SVRModel, images: Tensor, sdf: Tensor, albedo: Tensor) -> Tensor:
    """The SVR model's reconstruction loss: renders (B, 3, H, W), true truncated SDF (B, R, R, R) and albedo
    (B, 3, R, R, R) → L1 on the SDF + squared error of the colour on the voxels near the surface (|d| < δ)."""
    d, c = model(images)
    near = (sdf.abs() < TRUNCATION).float()[:, None]  # (B, 1, R, R, R)
    colour = ((c - albedo) ** 2 * near).sum() / (3 * near.sum()).clamp_min(1)
    return (d - sdf).abs().mean() / TRUNCATION + colour


def mix_noise(features: Tensor, generator: torch.Generator | None = None, noise: float = 0.75) -> Tensor:
    """The official code's noise mixing of the CLIP image features in stage 1: f (B, E) →
    normalize((1 − w)·f + w·n/‖n‖) (B, E), n ~ N(0, I), w = ``noise`` (0.75; 0 returns f unchanged)."""
    if noise == 0:
        return features
    n = torch.randn(features.shape, generator=generator).to(features)
    return F.normalize((1 - noise) * features + noise * F.normalize(n, dim=-1), dim=-1)


def mapper_loss(mapper: Mapper, features: Tensor, codes: Tensor) -> Tensor:
    """L_M = Σ_i ‖E_S(I_i) − M(f_{I,i})‖²₂, averaged over the batch: features f_I (B, E), codes E_S(I) (B, code_dim)
    (computed by the frozen E_S, so no gradient reaches it) → a scalar."""
    return ((codes.detach() - mapper(features)) ** 2).sum(dim=-1).mean()


# --- text → shape, rendering the decoded shape, stage 2 ------------------------------------------------------


def text_features(clip, prompt: str) -> Tensor:
    """f_T (1, E), unit norm, of a prompt; an empty prompt raises a ValueError, and so does a word the pocket CLIP
    never saw (its embedding of an unknown word means nothing: the mapper would decode noise)."""
    from text3d_edu.priors.clip import unknown_words

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty prompt: give a caption such as 'a red mug'")
    vocabulary = getattr(clip, "vocabulary", None)
    unknown = unknown_words(prompt, vocabulary) if vocabulary else []
    if unknown:
        raise ValueError(f"the pocket CLIP never saw the words {unknown}; the models that read its text features "
                         f"(DreamStone's mapper, SDFusion's U-Net) know only the Pocket World's vocabulary: "
                         f"{', '.join(sorted(vocabulary))}")
    return F.normalize(clip.encode_text([prompt]), dim=-1)


def volsdf_density(d: Tensor, beta: float) -> Tensor:
    """VolSDF's density (eq. 2) σ = α Ψ_β(−d), α = 1/β, of signed distances d (any shape): Ψ_β(−d) is
    ½ exp(−d/β) outside the surface (d > 0) and 1 − ½ exp(d/β) inside."""
    psi = torch.where(d > 0, 0.5 * torch.exp(-d.clamp_min(0) / beta), 1 - 0.5 * torch.exp(d.clamp_max(0) / beta))
    return psi / beta


class DecodedShape(nn.Module):
    """The decoded grids as a radiance field for ``rendering``: σ(x) = ``volsdf_density``(d(x)) and c(x), both read
    by trilinear interpolation. sdf (R, R, R), colour (3, R, R, R); points, view_dirs (N, 3) → σ (N,), rgb (N, 3).
    Differentiable with respect to both grids.

    ``shaded``: c(x) is lit as the Pocket World renders are (``world_render.lighting``: the two world-space lights on
    the normal n = ∇d/‖∇d‖, central differences of the grid), so the CLIP compares renders that look like the ones it
    was trained on; unshaded, the CLIP wants darker albedo (red turns brown in stage 2)."""

    def __init__(self, sdf: Tensor, colour: Tensor, beta: float = 0.02, shaded: bool = False):
        super().__init__()
        self.sdf, self.colour, self.beta = sdf[None, None], colour[None], beta
        spacing = 2.0 / (sdf.shape[-1] - 1)
        self.gradient = torch.stack(torch.gradient(sdf, spacing=spacing))[None] if shaded else None  # (1, 3, R, R, R)

    def forward(self, points: Tensor, view_dirs: Tensor) -> tuple[Tensor, Tensor]:
        inside = (points.abs() <= 1.0).all(dim=-1)
        sigma = volsdf_density(trilinear(self.sdf, points)[:, 0], self.beta)  # (N,)
        rgb = trilinear(self.colour, points)  # (N, 3)
        if self.gradient is not None:
            n = F.normalize(trilinear(self.gradient, points), dim=-1, eps=1e-6)  # (N, 3)
            rgb = (rgb * lighting(n)[:, None]).clamp(0, 1)
        return sigma * inside, rgb


@torch.no_grad()
def shape_to_field(sdf: Tensor, colour: Tensor, beta: float = 0.02, resolution: int = 64) -> GridField:
    """A decoded shape — sdf (R, R, R), colour (3, R, R, R) — as a ``GridField`` (what every grid result is, so
    ``generate``'s views, turntable, mesh and ``text3d-edu render`` read it): d and c upsampled trilinearly to
    ``resolution``³, log σ = log ``volsdf_density``(d) and the colour's logits. Outside the surface log σ is linear
    in d, so the grid's trilinear lookup of log σ is VolSDF's density of the interpolated d."""
    size = (resolution,) * 3
    d = F.interpolate(sdf[None, None], size=size, mode="trilinear", align_corners=True)  # (1, 1, r, r, r)
    c = F.interpolate(colour[None], size=size, mode="trilinear", align_corners=True)  # (1, 3, r, r, r)
    field_ = GridField(resolution)
    field_.log_sigma.copy_(volsdf_density(d, beta).log())
    field_.colour_logits.copy_(torch.logit(c.clamp(1e-4, 1 - 1e-4)))
    return field_


def decode(svr: SVRModel, mapper: Mapper, features: Tensor) -> tuple[Tensor, Tensor]:
    """D(M(f)): features (B, E) → SDF (B, R, R, R), colour (B, 3, R, R, R)."""
    return svr.decoder(mapper(features))


def render_shape(sdf: Tensor, colour: Tensor, cameras, n_samples: int = 48, beta: float = 0.02,
                 shaded: bool = True) -> Tensor:
    """Differentiable renders (B, 3, H, W) of one decoded shape — sdf (R, R, R), colour (3, R, R, R) — on the
    Pocket World background, from ``cameras`` (B views), lit like the Pocket World's renders when ``shaded``."""
    out = render_image(DecodedShape(sdf, colour, beta, shaded), cameras, n_samples, toyworld.BACKGROUND)
    return out["rgb"].permute(0, 3, 1, 2)


def consistency_loss(clip, f_text: Tensor, renders: Tensor) -> Tensor:
    """Stage 2's CLIP consistency loss, L_C = −(1/m) Σ_i f_T · E_I(R_i)/‖E_I(R_i)‖: f_T (1, E) unit norm, renders
    R (m, 3, H, W) → a scalar to minimise (the negative mean cosine similarity)."""
    return -(clip.encode_image(renders) @ f_text.T).mean()


@dataclass
class Stage2Config:
    steps: int = 100
    views: int = 4  # m: random cameras per step
    lr: float = 1e-4
    n_samples: int = 32  # volume-rendering samples per ray
    beta: float = 0.02  # VolSDF's β
    shaded: bool = True  # light the renders as the Pocket World's (``DecodedShape``)


def refine_mapper(mapper: Mapper, svr: SVRModel, clip, prompt: str, config: Stage2Config | None = None,
                  seed: int = 0, progress: bool = False) -> tuple[Mapper, list[float]]:
    """Stage 2: a copy M' of the mapper, fine-tuned for one prompt with ``consistency_loss`` on renders of
    D(M'(f_T)) from ``config.views`` random cameras a step. D and the CLIP stay frozen (no gradient reaches them);
    returns (M', the loss at each step)."""
    config = config or Stage2Config()
    f_text = text_features(clip, prompt)  # (1, E)
    svr = svr.eval().requires_grad_(False)
    refined = copy.deepcopy(mapper).train().requires_grad_(True)
    optimizer = torch.optim.Adam(refined.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in tqdm(range(config.steps), desc="DreamStone stage 2", disable=not progress):
        cameras = sample_cameras(config.views, generator, elevation_range=pocket_data.ELEVATION_RANGE,
                                 radius_range=pocket_data.RADIUS_RANGE, resolution=clip.image_size)
        sdf, colour = decode(svr, refined, f_text)  # (1, R, R, R), (1, 3, R, R, R)
        loss = consistency_loss(clip, f_text, render_shape(sdf[0], colour[0], cameras, config.n_samples,
                                                            config.beta, config.shaded))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage 2's loss became {loss.item()} at step {step} for {prompt!r}: lower "
                                     f"Stage2Config.lr (now {config.lr})")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return refined.eval().requires_grad_(False), losses


@torch.no_grad()
def text_to_shape(svr: SVRModel, mapper: Mapper, clip, prompt: str) -> tuple[Tensor, Tensor]:
    """Text → shape: D(M(f_T)) for one prompt → SDF (R, R, R), colour (3, R, R, R)."""
    sdf, colour = decode(svr, mapper, text_features(clip, prompt))
    return sdf[0], colour[0]


def shape_mesh(sdf: Tensor, colour: Tensor):
    """The decoded shape as a ``trimesh.Trimesh``: marching cubes of d = 0, vertex colours read from c."""
    from text3d_edu.mesh import marching_cubes_mesh

    return marching_cubes_mesh(sdf.numpy(), level=0.0, inside_is_below=True,
                               colour_fn=lambda points: trilinear(colour[None], points))


def generate_dreamstone(prompt: str, out_dir: str | Path | None = None, config: Stage2Config | None = None,
                        seed: int = 0, clip=None, weights_dir: str | Path | None = None) -> tuple[GridField, dict]:
    """``text3d-edu generate PROMPT --method dreamstone``: text → shape by D(M(f_T)) (stage 1), then stage 2 on this
    prompt (``refine_mapper``), the result as a grid field (``shape_to_field``) and the judge's figures.

    With ``out_dir``, writes what every grid method writes (views.png under the truth, turntable.gif, mesh.glb,
    metrics.json, checkpoint.pt, which ``text3d-edu render`` re-renders) and stage1_views.png (the shape before
    stage 2). ``metrics.json`` holds both stages' seconds, stage 2's first and last L_C, and for a Pocket World
    caption the nearest kind by occupancy IoU before and after stage 2 beside the judge's and the fidelity's."""
    from text3d_edu import viz
    from text3d_edu.fidelity import fidelity_cameras, truth_renders
    from text3d_edu.generate import field_fidelity, judge, judge_cameras, render_views, write_outputs
    from text3d_edu.priors import load_clip

    config = config or Stage2Config()
    out = Path(out_dir) if out_dir is not None else None
    if out and (out / "metrics.json").exists():
        raise ValueError(f"{out} already holds a result: choose another output (DreamStone has nothing to resume)")
    clip = clip or load_clip("pocket")
    text_features(clip, prompt)  # a bad prompt fails before the weights load
    svr, mapper = load_dreamstone(weights_dir)
    tick = time.perf_counter()
    before = text_to_shape(svr, mapper, clip, prompt)
    stage1 = time.perf_counter() - tick
    tick = time.perf_counter()
    refined, losses = refine_mapper(mapper, svr, clip, prompt, config, seed)
    after = text_to_shape(svr, refined, clip, prompt)
    stage2 = time.perf_counter() - tick
    field_ = shape_to_field(*after, beta=config.beta)
    views = render_views(field_, judge_cameras(32))  # (8, 3, 32, 32)
    metrics = {"prompt": prompt, "method": "dreamstone", "representation": "grid", "seed": seed,
               "config": asdict(config), "steps": config.steps, "seconds": round(stage1 + stage2, 2),
               "stage_seconds": {"stage1": round(stage1, 2), "stage2": round(stage2, 2)},
               "stage2_loss": {"first": round(losses[0], 4), "last": round(losses[-1], 4)} if losses else None,
               **judge(views, prompt, clip)}
    try:
        toyworld.parse_caption(prompt)
    except ValueError:  # not a Pocket World caption: the judge's figures only
        pass
    else:
        grids = kind_grids(svr.config.grid)
        for stage, (sdf, colour) in (("stage1", before), ("stage2", after)):
            kind, iou = nearest_kind(sdf, grids)
            metrics[f"{stage}_shape"] = {"kind": kind, "iou": round(iou, 3), "colour": nearest_colour(sdf, colour)}
        metrics.update(field_fidelity(field_, prompt, truth_renders(prompt, fidelity_cameras())))
    if out:
        write_outputs(field_, views, metrics, out)
        torch.save({"field": field_.state_dict()}, out / "checkpoint.pt")  # a grid result
        stage1_views = render_views(shape_to_field(*before, beta=config.beta), judge_cameras(32))
        viz.image_grid(stage1_views.permute(0, 2, 3, 1), ncols=8, titles=["stage 1"] * 8,
                       path=out / "stage1_views.png", scale=1.3)
    return field_, metrics


# --- judging a decoded shape against the Pocket World --------------------------------------------------------


def kind_grids(resolution: int) -> dict[str, Tensor]:
    """Each kind's canonical occupancy (R, R, R) bool (seed 0, no form; the shape does not depend on the colour)."""
    return {kind: sdf_grid(toyworld.make_object(kind, "red", second_colour="blue" if kind == "cube stack" else ""),
                           resolution) < 0 for kind in toyworld.KINDS}


def nearest_kind(sdf: Tensor, grids: dict[str, Tensor]) -> tuple[str, float]:
    """The catalogue kind whose occupancy has the highest IoU with the decoded shape's (d < 0): (kind, IoU)."""
    occupied = sdf < 0
    ious = {kind: ((occupied & g).sum() / (occupied | g).sum().clamp_min(1)).item() for kind, g in grids.items()}
    best = max(ious, key=ious.get)
    return best, ious[best]


def nearest_colour(sdf: Tensor, colour: Tensor) -> str:
    """The catalogue colour nearest the median decoded colour of the voxels just inside the surface (−δ < d < 0);
    "none" when the shape is empty."""
    shell = (sdf < 0) & (sdf > -TRUNCATION)
    if not shell.any():
        return "none"
    median = colour[:, shell].median(dim=1).values  # (3,)
    names = list(toyworld.COLOURS)
    return names[int((torch.tensor([toyworld.COLOURS[n] for n in names]) - median).norm(dim=1).argmin())]


def evaluate(svr: SVRModel, mapper: Mapper, clip, prompts: list[str] | None = None,
             refine: Stage2Config | None = None, seed: int = 0) -> dict:
    """Text → shape accuracy on ``prompts`` (every kind in ``EVAL_COLOURS`` by default): the nearest kind by
    occupancy IoU and the nearest colour (``nearest_kind`` / ``nearest_colour``) against the prompt's, and the
    IoU with the prompt's own kind; with ``refine``, after stage 2 on each prompt. Returns {"kind_acc",
    "colour_acc", "mean_true_kind_iou", "seconds_per_prompt", "shapes": [{"prompt", "kind", "iou",
    "true_kind_iou", "colour"}]}."""
    prompts = prompts or [toyworld.with_article(f"{c} {k}") for k in toyworld.KINDS for c in EVAL_COLOURS]
    grids = kind_grids(svr.config.grid)
    rows, started = [], time.perf_counter()
    for prompt in prompts:
        m = refine_mapper(mapper, svr, clip, prompt, refine, seed)[0] if refine else mapper
        sdf, colour = text_to_shape(svr, m, clip, prompt)
        kind, iou = nearest_kind(sdf, grids)
        true_kind = toyworld.parse_caption(prompt).kind
        true_iou = ((sdf < 0) & grids[true_kind]).sum() / ((sdf < 0) | grids[true_kind]).sum().clamp_min(1)
        rows.append({"prompt": prompt, "kind": kind, "iou": round(iou, 3), "true_kind_iou": round(true_iou.item(), 3),
                     "colour": nearest_colour(sdf, colour)})
    truth = [toyworld.parse_caption(p) for p in prompts]
    n = len(prompts)
    return {"kind_acc": sum(r["kind"] == t.kind for r, t in zip(rows, truth)) / n,
            "colour_acc": sum(r["colour"] == t.colour for r, t in zip(rows, truth)) / n,
            "mean_true_kind_iou": round(sum(r["true_kind_iou"] for r in rows) / n, 3),
            "seconds_per_prompt": round((time.perf_counter() - started) / n, 2), "shapes": rows}


@torch.no_grad()
def modality_gap(clip, data: dict) -> dict:
    """The CLIP modality gap on ``shape_dataset`` data (Liang et al. 2022): ‖mean f_I − mean f_T‖ between the image
    features and the text features of the same objects' short captions, and the mean cosine of matching pairs."""
    kinds, colours = list(toyworld.KINDS), list(toyworld.COLOURS)
    captions = [toyworld.with_article(f"{colours[c]} {kinds[k]}")
                for k, c in zip(data["kind"].tolist(), data["colour"].tolist())]
    f_text = torch.cat([clip.encode_text(captions[i:i + 256]) for i in range(0, len(captions), 256)])  # (N, E)
    f_image = data["features"][:, 0]  # (N, E)
    return {"gap": (f_image.mean(0) - f_text.mean(0)).norm().item(),
            "pair_cosine": (f_image * f_text).sum(-1).mean().item()}


# --- training and loading ------------------------------------------------------------------------------------


def _training_setup(model: nn.Module, lr: float, steps: int):
    """Both stage-1 phases' (Accelerator, AdamW, cosine schedule with a warm-up of a tenth of the steps, ≤ 200)."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(200, steps // 10),
                                 num_training_steps=steps)
    return Accelerator(), optimizer, lr_scheduler


def train_svr(config: DreamStoneConfig, data: dict, steps: int, seed: int, out: Path, resume: bool,
              batch_size: int = 32, lr: float = 1e-3, checkpoint_every: int = 500) -> tuple[SVRModel, float]:
    """Stage 1a: E_S and D on random views ↔ their object's grids (``svr_loss``); returns (model, smoothed loss)."""
    torch.manual_seed(seed)
    model = SVRModel(config)
    accelerator, optimizer, lr_scheduler = _training_setup(model, lr, steps)
    n_objects, views = data["images"].shape[:2]

    def loss_fn(model, generator):
        index = torch.randint(n_objects, (batch_size,), generator=generator)  # (B,) objects
        view = torch.randint(views, (batch_size,), generator=generator)  # (B,) one render of each
        images = data["images"][index, view].float() / 255  # (B, 3, 32, 32)
        return svr_loss(model, images, data["sdf"][index], data["albedo"][index])

    result = training_loop("dreamstone_svr", PHASE_IDS["svr"], accelerator, model, optimizer, lr_scheduler, steps,
                           loss_fn, out, seed, resume, checkpoint_every)
    return result["model"].eval(), result["loss"]


@torch.no_grad()
def image_codes(svr: SVRModel, images: Tensor) -> Tensor:
    """E_S of every render: uint8 (N, V, 3, H, W) → codes (N, V, code_dim), the targets of L_M."""
    flat = images.reshape(-1, *images.shape[2:])
    codes = torch.cat([svr.encoder(chunk.float() / 255) for chunk in flat.split(512)])
    return codes.reshape(*images.shape[:2], -1)


def train_mapper(config: DreamStoneConfig, features: Tensor, codes: Tensor, steps: int, seed: int, out: Path,
                 resume: bool, noise: float = 0.75, batch_size: int = 128, lr: float = 1e-3,
                 checkpoint_every: int = 500, phase: str = "dreamstone_mapper") -> tuple[Mapper, float]:
    """Stage 1b: M on L_M from CLIP image features (N, V, E), noise-mixed by ``mix_noise`` with weight ``noise``,
    to the frozen E_S's codes (N, V, code_dim); returns (M, smoothed loss)."""
    torch.manual_seed(seed)
    mapper = Mapper(config)
    accelerator, optimizer, lr_scheduler = _training_setup(mapper, lr, steps)
    f, target = features.reshape(-1, features.shape[-1]), codes.reshape(-1, codes.shape[-1])

    def loss_fn(mapper, generator):
        index = torch.randint(f.shape[0], (batch_size,), generator=generator)  # (B,)
        return mapper_loss(mapper, mix_noise(f[index], generator, noise), target[index])

    result = training_loop(phase, PHASE_IDS["mapper"], accelerator, mapper, optimizer, lr_scheduler, steps, loss_fn,
                           out, seed, resume, checkpoint_every)
    return result["model"].eval(), result["loss"]


def save_model(model: SVRModel | Mapper, path: str | Path) -> None:
    """The model as float16 safetensors, its ``DreamStoneConfig`` in the metadata."""
    save_weights(model, Path(path), asdict(model.config))


def load_model(path: str | Path, kind: str) -> SVRModel | Mapper:
    """A model ``save_model`` wrote (``kind``: "svr" or "mapper"), float32, eval, frozen; a clear error when the
    file is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no DreamStone {kind} weights at {path}: train them with "
                                f"`text3d-edu train-dreamstone`")
    build = {"svr": SVRModel, "mapper": Mapper}[kind]
    model = load_weights(path, lambda config: build(DreamStoneConfig(**config)))
    return model.eval().requires_grad_(False)


def load_dreamstone(weights_dir: str | Path | None = None) -> tuple[SVRModel, Mapper]:
    """The shipped (or ``weights_dir``'s) SVR model and mapper."""
    from text3d_edu.priors.pocket_clip import WEIGHTS_DIR

    folder = Path(weights_dir or WEIGHTS_DIR)
    return load_model(folder / WEIGHTS["svr"], "svr"), load_model(folder / WEIGHTS["mapper"], "mapper")


def train_dreamstone(out_dir: str | Path = "runs/dreamstone", weights_dir: str | Path | None = None,
                     svr_steps: int = 4000, mapper_steps: int = 3000, n_objects: int = 1040,
                     views_per_object: int = 4, noise: float = 0.75, seed: int = 0, resume: bool = False,
                     threads: int = 1, workers: int = 1, checkpoint_every: int = 500, command: str = "",
                     config: DreamStoneConfig | None = None) -> dict:
    """Stage 1 (``text3d-edu train-dreamstone``): build the pairs, train the SVR model (E_S, D), then the mapper M
    on L_M, and write both as safetensors into ``weights_dir`` (the package's ``weights/`` by default) with
    ``dreamstone.json`` (command, sizes, minutes, losses, the modality gap and the stage-1 text → shape accuracy).
    With ``resume``, a finished model is loaded from ``out_dir`` and an unfinished one continues from its last
    checkpoint."""
    from text3d_edu.priors import load_clip

    torch.set_num_threads(threads)
    config = config or DreamStoneConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases(out, resume, "dreamstone", save_model, load_model)
    clip = load_clip("pocket")
    started = time.time()
    data = shape_dataset(n_objects, views_per_object, config.grid, seed, clip=clip, cache_dir=out / "data",
                         workers=workers, progress=True)
    phases.add_minutes("data", started)

    svr = phases.run("svr", out / WEIGHTS["svr"], lambda: train_svr(
        config, data, svr_steps, seed, out, resume, checkpoint_every=checkpoint_every))
    codes = image_codes(svr, data["images"])
    mapper = phases.run("mapper", out / WEIGHTS["mapper"], lambda: train_mapper(
        config, data["features"], codes, mapper_steps, seed, out, resume, noise, checkpoint_every=checkpoint_every))
    stats = {"command": command, "seed": seed, "threads": threads,
             "steps": {"svr": svr_steps, "mapper": mapper_steps}, "noise": noise,
             "data": {"objects": n_objects, "views_per_object": views_per_object, "grid": config.grid},
             "sizes": asdict(config), "minutes": {k: round(v, 2) for k, v in phases.minutes.items()},
             "loss": phases.losses,
             "modality_gap": modality_gap(clip, data),
             "stage1_text_to_shape": {k: v for k, v in evaluate(svr, mapper, clip).items() if k != "shapes"},
             "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    publish_weights(out, WEIGHTS.values(), weights_dir, STATS_FILE, stats)
    return stats

