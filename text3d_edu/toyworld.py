"""The Pocket World: a procedural catalogue of small objects built from analytic SDF primitives, with captions.

Every method in the course learns from this world and is judged against it, the way real text-to-3D systems
learn from web images and are judged by CLIP. An object is a *kind* (table, mug, snowman, ...) × a *colour* ×
an optional *form* (small / large / tall / short), plus a seed that jitters its proportions a little. Its caption
follows the lecture's style: "a tall brown table", "a red mug".

Every kind faces **+z** and has a canonical front that differs from its back (a drawer, a face, a door, a
handle on the +x side, headlights, ...): the Janus lecture (06) needs that to tell a front from a back.

    >>> obj = make_object("mug", "red", form="tall")
    >>> obj.caption
    'a tall red mug'

Rendering, point clouds, SDF grids and meshes of an object live in ``text3d_edu.world_render``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from text3d_edu import sdf
from text3d_edu.sdf import SDF, rotation_x, rotation_z

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.96, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.12),
    "green": (0.15, 0.62, 0.20),
    "blue": (0.12, 0.30, 0.85),
    "purple": (0.52, 0.20, 0.72),
    "pink": (0.97, 0.55, 0.72),
    "brown": (0.48, 0.29, 0.14),
    "white": (0.95, 0.95, 0.93),
    "black": (0.10, 0.10, 0.11),
}
# A neutral blue-grey that is none of the colours above: white and black objects both stay visible on it.
BACKGROUND = (0.60, 0.66, 0.72)

FORMS = {"": (1.0, 1.0), "small": (0.72, 1.0), "large": (1.22, 1.0), "tall": (1.0, 1.3), "short": (1.0, 0.72)}
"""form → (uniform scale, extra vertical stretch). At most one form per object keeps it inside [−1, 1]³."""

DARK = (0.16, 0.16, 0.18)
CREAM = (0.92, 0.86, 0.70)


@dataclass(frozen=True)
class Part:
    """One coloured solid of an object: an SDF and an RGB albedo in [0, 1]."""

    name: str
    sdf: SDF = field(compare=False, repr=False)
    albedo: tuple[float, float, float]


@dataclass(frozen=True)
class PocketObject:
    """An object of the Pocket World. ``parts`` are in world units, inside the cube [−1, 1]³, front facing +z."""

    kind: str
    colour: str
    form: str
    seed: int
    parts: tuple[Part, ...] = field(compare=False, repr=False)
    second_colour: str = ""

    @property
    def caption(self) -> str:
        """The full caption in the lecture's style, e.g. 'a tall brown table'."""
        if self.kind == "cube stack":
            return f"a small {self.colour} cube on top of a large {self.second_colour} cube"
        words = [self.form, self.colour, self.kind] if self.form else [self.colour, self.kind]
        return with_article(" ".join(words))

    @property
    def short_caption(self) -> str:
        """'a {colour} {kind}' ('an orange duck'): the caption the judges compare against (kind × colour)."""
        return with_article(f"{self.colour} {self.kind}")

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance of the whole object: points (N, 3) → (N,)."""
        return self.part_distances(points).min(dim=0).values

    def part_distances(self, points: Tensor) -> Tensor:
        """Distances to every part: points (N, 3) → (P, N)."""
        sdf.check_points(points)
        return torch.stack([part.sdf(points) for part in self.parts])

    def albedo(self, points: Tensor) -> Tensor:
        """Colour of the nearest part: points (N, 3) → RGB (N, 3)."""
        nearest = self.part_distances(points).argmin(dim=0)
        palette = torch.tensor([part.albedo for part in self.parts], dtype=points.dtype)
        return palette[nearest]


def _shade(rgb: tuple[float, float, float], factor: float) -> tuple[float, float, float]:
    return tuple(min(1.0, c * factor) for c in rgb)  # type: ignore[return-value]


def _accent(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """A darker (or, for dark colours, lighter) version of a colour, for front details in the object's colour."""
    return _shade(rgb, 0.55) if sum(rgb) > 0.6 else (0.45, 0.45, 0.47)


# --- the kinds: each builder takes the main colour and a jitter j ∈ [0.92, 1.08]³ and returns parts --------------


def _table(c, j):
    top_y, leg_h = 0.22, 0.55 * j[1]
    w, d = 0.7 * j[0], 0.48 * j[2]
    legs = [sdf.box((sx * (w - 0.07), top_y - leg_h / 2, sz * (d - 0.07)), (0.05, leg_h / 2, 0.05))
            for sx in (-1, 1) for sz in (-1, 1)]
    return [
        Part("top", sdf.box((0, top_y + 0.04, 0), (w, 0.04, d), 0.01), c),
        Part("legs", sdf.union(*legs), c),
        Part("drawer", sdf.box((0, top_y - 0.07, d - 0.04), (0.3, 0.07, 0.04), 0.01), _accent(c)),
    ]


def _chair(c, j):
    seat_y, w = 0.0, 0.42 * j[0]
    legs = [sdf.box((sx * (w - 0.05), seat_y - 0.3, sz * (w - 0.05)), (0.04, 0.3, 0.04))
            for sx in (-1, 1) for sz in (-1, 1)]
    return [
        Part("seat", sdf.box((0, seat_y + 0.03, 0), (w, 0.04, w), 0.01), c),
        Part("legs", sdf.union(*legs), c),
        Part("back", sdf.box((0, seat_y + 0.36 * j[1], -w + 0.04), (w, 0.32 * j[1], 0.04), 0.01), c),
        Part("cushion", sdf.box((0, seat_y + 0.09, 0.03), (w - 0.06, 0.03, w - 0.09), 0.02), _accent(c)),
    ]


def _stool(c, j):
    h = 0.5 * j[1]
    legs = [sdf.capsule((0.3 * dx, -h, 0.3 * dz), (0.18 * dx, h - 0.1, 0.18 * dz), 0.04)
            for dx, dz in ((1, 1), (-1, 1), (1, -1), (-1, -1))]
    return [
        Part("seat", sdf.cylinder((0, h - 0.05, 0), 0.34 * j[0], 0.05), c),
        Part("legs", sdf.union(*legs), c),
        Part("footrest", sdf.capsule((-0.24, -0.15, 0.24), (0.24, -0.15, 0.24), 0.035), _accent(c)),
        Part("low back", sdf.box((0, h + 0.1, -0.26 * j[0]), (0.2, 0.09, 0.03), 0.02), _accent(c)),
    ]


def _mug(c, j):
    r, h = 0.36 * j[0], 0.42 * j[1]
    body = sdf.subtract(sdf.cylinder((0, 0, 0), r, h), sdf.cylinder((0, 0.08, 0), r - 0.06, h))
    ring = sdf.torus((r + 0.04, 0.02, 0), 0.2 * j[1], 0.055, rotation=rotation_x(90))  # in the xy plane
    handle = sdf.intersect(ring, sdf.half_space((-1, 0, 0), -(r - 0.03)))  # only the half outside the body
    label = sdf.intersect(sdf.cylinder((0, 0, 0), r + 0.015, h * 0.45), sdf.box((0, 0, r), (0.17, h, 0.2)))
    label_colour = COLOURS["white"] if c != COLOURS["white"] else COLOURS["red"]
    # the handle is on +x (the viewer's right when looking at the front; the mug's own right is −x)
    # and a printed label on its front (+z)
    return [Part("body", body, c), Part("handle", handle, c), Part("label", label, label_colour)]


def _traffic_cone(c, j):
    h = 0.55 * j[1]
    stripe = _shade(c, 0.5) if c == COLOURS["white"] else COLOURS["white"]
    return [
        Part("cone", sdf.capped_cone((0, -0.1 + 0.0, 0), h, 0.36 * j[0], 0.05), c),
        Part("stripe", sdf.capped_cone((0, 0.0, 0), 0.07, 0.205 * j[0], 0.18 * j[0]), stripe),
        Part("base", sdf.box((0, -0.1 - h - 0.03, 0), (0.45, 0.04, 0.45), 0.02), DARK),
        Part("tag", sdf.box((0, -0.1 - h + 0.02, 0.45), (0.14, 0.05, 0.03)), stripe),
    ]


def _snowman(c, j):
    s = j[1]
    face = COLOURS["white"] if c == COLOURS["black"] else DARK
    return [
        Part("body", sdf.union(sdf.sphere((0, -0.38 * s, 0), 0.36), sdf.sphere((0, 0.12 * s, 0), 0.27)), c),
        Part("head", sdf.sphere((0, 0.5 * s, 0), 0.2), c),
        Part("nose", sdf.capped_cone((0, 0.5 * s, 0.27), 0.09, 0.05, 0.0, rotation=rotation_x(90)),
             COLOURS["orange"]),
        Part("eyes", sdf.union(sdf.sphere((0.08, 0.57 * s, 0.17), 0.035), sdf.sphere((-0.08, 0.57 * s, 0.17), 0.035)),
             face),
        Part("buttons", sdf.union(sdf.sphere((0, 0.2 * s, 0.26), 0.04), sdf.sphere((0, 0.05 * s, 0.27), 0.04)), face),
    ]


def _mushroom(c, j):
    h = 0.32 * j[1]
    cap = sdf.intersect(sdf.ellipsoid((0, h - 0.05, 0), (0.62 * j[0], 0.42, 0.62 * j[0])),
                        sdf.half_space((0, -1, 0), -(h - 0.05)))
    spots = sdf.union(*[sdf.sphere((0.3 * dx, h + 0.18, 0.38), 0.08) for dx in (-1, 0, 1)])
    return [
        Part("cap", cap, c),
        Part("stem", sdf.capped_cone((0, -0.2, 0), h + 0.2, 0.24, 0.17), CREAM),
        Part("spots", spots, COLOURS["white"] if c != COLOURS["white"] else COLOURS["red"]),
        Part("door", sdf.box((0, -0.3, 0.2), (0.08, 0.13, 0.05), 0.02), COLOURS["brown"]),
    ]


def _lamp(c, j):
    h = j[1]
    return [
        Part("base", sdf.cylinder((0, -0.62, 0), 0.3 * j[0], 0.05), DARK),
        Part("pole", sdf.capsule((0, -0.6, -0.05), (0, 0.35 * h, -0.1), 0.035), DARK),
        Part("arm", sdf.capsule((0, 0.35 * h, -0.1), (0, 0.35 * h, 0.2), 0.03), DARK),
        Part("shade", sdf.capped_cone((0, 0.22 * h, 0.28), 0.16, 0.3 * j[0], 0.1, rotation=rotation_x(25)), c),
    ]


def _rocket(c, j):
    h = 0.42 * j[1]
    fins = [sdf.box((0.24 * dx, -h + 0.08, 0), (0.12, 0.16, 0.02)) for dx in (-1, 1)]
    fins.append(sdf.box((0, -h + 0.08, -0.24), (0.02, 0.16, 0.12)))  # no fin at the front: front ≠ back
    return [
        Part("body", sdf.cylinder((0, -0.05, 0), 0.2 * j[0], h), c),
        Part("nose", sdf.capped_cone((0, h + 0.12, 0), 0.17, 0.2 * j[0], 0.0), COLOURS["red"]
             if c != COLOURS["red"] else COLOURS["white"]),
        Part("fins", sdf.union(*fins), DARK),
        Part("window", sdf.sphere((0, 0.12, 0.17 * j[0]), 0.08), (0.55, 0.85, 0.95)),
    ]


def _car(c, j):
    w, l = 0.36 * j[0], 0.72 * j[2]
    wheels = [sdf.cylinder((sx * (w + 0.02), -0.3, sz * (l - 0.2)), 0.15, 0.06, rotation=rotation_z(90))
              for sx in (-1, 1) for sz in (-1, 1)]
    lights = [sdf.sphere((sx * (w - 0.1), -0.08, l - 0.01), 0.06) for sx in (-1, 1)]
    return [
        Part("body", sdf.box((0, -0.12, 0), (w, 0.15, l), 0.05), c),
        Part("cabin", sdf.box((0, 0.12 * j[1] + 0.05, -0.15), (w - 0.05, 0.15 * j[1], 0.32), 0.05), c),
        Part("windows", sdf.box((0, 0.12 * j[1] + 0.07, 0.0), (w - 0.08, 0.1 * j[1], 0.2), 0.02),
             (0.25, 0.3, 0.38)),
        Part("wheels", sdf.union(*wheels), DARK),
        Part("lights", sdf.union(*lights), COLOURS["yellow"]),
    ]


def _house(c, j):
    w, h, floor = 0.5 * j[0], 0.33 * j[1], -0.66
    top = floor + 2 * h
    apex = top + w + 0.08  # a 45° gable roof, ridge along x
    roof = sdf.intersect(sdf.box((0, top + 0.3, 0), (w + 0.08, 0.3, w + 0.08)),
                         sdf.intersect(sdf.half_space((0.0, 0.707, 0.707), 0.707 * apex),
                                       sdf.half_space((0.0, 0.707, -0.707), 0.707 * apex)))
    window_y = floor + h + 0.08
    return [
        Part("walls", sdf.box((0, floor + h, 0), (w, h, w)), c),
        Part("roof", roof, (0.55, 0.18, 0.12) if c != COLOURS["red"] else DARK),
        Part("door", sdf.box((0, floor + 0.17, w), (0.1, 0.17, 0.03)), COLOURS["brown"]
             if c != COLOURS["brown"] else DARK),
        Part("windows", sdf.union(sdf.box((0.3 * j[0], window_y, w), (0.08, 0.08, 0.03)),
                                  sdf.box((-0.3 * j[0], window_y, w), (0.08, 0.08, 0.03))), (0.55, 0.85, 0.95)),
        Part("chimney", sdf.box((-0.25, apex - 0.2, -0.2), (0.06, 0.12, 0.06)), DARK),
    ]


def _duck(c, j):
    return [
        Part("body", sdf.ellipsoid((0, -0.25, -0.05), (0.4 * j[0], 0.28 * j[1], 0.5)), c),
        Part("head", sdf.sphere((0, 0.2 * j[1], 0.25), 0.22), c),
        Part("tail", sdf.capped_cone((0, -0.1, -0.5), 0.12, 0.14, 0.02, rotation=rotation_x(-60)), c),
        Part("beak", sdf.ellipsoid((0, 0.15 * j[1], 0.5), (0.12, 0.05, 0.12)),
             COLOURS["orange"] if c != COLOURS["orange"] else COLOURS["red"]),
        Part("eyes", sdf.union(sdf.sphere((0.12, 0.28 * j[1], 0.38), 0.035),
                               sdf.sphere((-0.12, 0.28 * j[1], 0.38), 0.035)), DARK),
    ]


def _cube_stack(c, j, c2):
    return [
        Part("large cube", sdf.box((0, -0.3, 0), (0.34 * j[0], 0.32, 0.34 * j[2]), 0.02), c2),
        Part("small cube", sdf.box((0, 0.2 * j[1], 0.12), (0.18, 0.18 * j[1], 0.18), 0.02), c),
        Part("front mark", sdf.box((0, -0.3, 0.34 * j[2]), (0.2, 0.2, 0.02)), _accent(c2)),
    ]


KINDS = {
    "table": _table,
    "chair": _chair,
    "stool": _stool,
    "mug": _mug,
    "traffic cone": _traffic_cone,
    "snowman": _snowman,
    "mushroom": _mushroom,
    "lamp": _lamp,
    "rocket": _rocket,
    "car": _car,
    "house": _house,
    "duck": _duck,
    "cube stack": _cube_stack,
}


def _check_choice(value: str, known, what: str) -> None:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; the Pocket World knows: {', '.join(repr(k) for k in known)}")


def make_object(kind: str, colour: str, form: str = "", seed: int = 0, second_colour: str = "") -> PocketObject:
    """Build one object. ``seed`` jitters proportions by up to ±8 % (seed 0 gives the canonical proportions).

    ``second_colour`` is used by "cube stack" only (the large bottom cube); by default the seed picks one.
    """
    _check_choice(kind, KINDS, "kind")
    _check_choice(colour, COLOURS, "colour")
    _check_choice(form, FORMS, "form")
    rng = random.Random(seed)
    jitter = (1.0, 1.0, 1.0) if seed == 0 else tuple(rng.uniform(0.92, 1.08) for _ in range(3))
    if kind == "cube stack":
        if not second_colour:
            second_colour = rng.choice([c for c in COLOURS if c != colour])
        _check_choice(second_colour, COLOURS, "colour")
        parts = _cube_stack(COLOURS[colour], jitter, COLOURS[second_colour])
    else:
        second_colour = ""
        parts = KINDS[kind](COLOURS[colour], jitter)
    scale, stretch = FORMS[form]
    if (scale, stretch) != (1.0, 1.0):
        parts = [Part(p.name, sdf.scaled(p.sdf, (scale, scale * stretch, scale)), p.albedo) for p in parts]
    return PocketObject(kind, colour, form, seed, tuple(parts), second_colour)


def sample_object(seed: int, kinds=None, colours=None, form_probability: float = 0.4) -> PocketObject:
    """A random object, deterministic in ``seed``: uniform kind and colour, a form with ``form_probability``."""
    rng = random.Random(seed)
    kind = rng.choice(list(kinds or KINDS))
    colour = rng.choice(list(colours or COLOURS))
    form = rng.choice([f for f in FORMS if f]) if rng.random() < form_probability else ""
    return make_object(kind, colour, form, seed=seed + 1)  # seed + 1: sample_object(0) is jittered too


_CUBE_STACK = re.compile(r"^a small (\w+) cube on top of a large (\w+) cube$")


def parse_caption(caption: str) -> PocketObject:
    """The inverse of ``PocketObject.caption``: 'a tall brown table' → that object (seed 0).

    Raises a ValueError that lists the known words when the caption is not in the Pocket World's language.
    """
    text = " ".join(caption.lower().strip().rstrip(".").split())
    if not text:
        raise ValueError("empty caption; try e.g. 'a red mug' (text3d-edu world --list shows the catalogue)")
    match = _CUBE_STACK.match(text)
    if match:
        return make_object("cube stack", match.group(1), second_colour=match.group(2))
    words = text.split()
    if words[0] in ("a", "an"):
        words = words[1:]
    form = words.pop(0) if words and words[0] in FORMS else ""
    colour = words.pop(0) if words and words[0] in COLOURS else ""
    kind = " ".join(words)
    if not colour or kind not in KINDS:
        raise ValueError(
            f"cannot read {caption!r} as 'a [form] <colour> <kind>'. "
            f"forms: {', '.join(f for f in FORMS if f)}; colours: {', '.join(COLOURS)}; kinds: {', '.join(KINDS)}"
        )
    return make_object(kind, colour, form)


def with_article(noun_phrase: str) -> str:
    """'orange duck' → 'an orange duck', 'red mug' → 'a red mug' (the only vowel-initial word is 'orange')."""
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def catalogue_captions() -> list[str]:
    """Every 'a {colour} {kind}' of the world: the candidate list for R-precision."""
    return [with_article(f"{colour} {kind}") for kind in KINDS for colour in COLOURS]


def vocabulary() -> set[str]:
    """Every word the Pocket World's captions can use (view suffixes included)."""
    words = {"a", "an", "small", "cube", "on", "top", "of", "large", "view"} | set(FORMS) - {""}
    words |= set(COLOURS) | {w for kind in KINDS for w in kind.split()}
    return words | {"front", "side", "back", "overhead"}
