"""synthetic-shapes: the built-in dataset, generated in a few seconds, no files.

Why it exists: purer's default job, its tests and its CI must run where no
real dataset is installed, and few-shot learning must still mean something
there: meta-test classes must be new, yet built from parts the meta-train
classes taught.

Design. A class is one combination of four primitives:

* shape (8): circle, square, triangle, cross, ring, star, crescent, bar;
* texture (5): plain, stripes, checker, dots, grid (drawn in the shape's frame);
* foreground colour (8) and background colour (5) from fixed palettes.

Of the 1,600 combinations, 100 are drawn once (a fixed seed) and dealt 64/16/20
to meta_train/meta_val/meta_test, so the splits hold disjoint combinations of
shared primitives. Each image varies what a class does not fix: position,
scale, rotation (any angle), aspect, colour brightness and tint, background
gradient, texture frequency and phase, a small distractor disc of random
colour in half of the images, and pixel noise. Classes of one episode often
share two or three primitives, so a random Conv4 after one gradient step is
well above chance but far from perfect.

Determinism. Every random number comes from ``torch.rand`` on a CPU
``torch.Generator`` seeded per class from :data:`SEED`, and the pixels use
only exactly rounded operations (+, -, *, /, sqrt, floor, min/max, compare)
with no reductions and no transcendental functions (rotations use the
rational parametrisation of the circle, the star's lobes a Chebyshev
polynomial). All random numbers of a class are drawn before any pixel, so
neither the chunking nor the threads (several classes are drawn at once) can
change them. So the bytes are identical on every machine, thread count and
SIMD width; the tests pin a sha256.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch
from purer_plugins.datasets import SyntheticShapesOptions
from torch import Tensor

from purer.api import DatasetReader, InputSpace, SplitData, check_split, make_split, share

SEED = 20230618
SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent", "bar")
TEXTURES = ("plain", "stripes", "checker", "dots", "grid")
FOREGROUND = {
    "red": (0.85, 0.15, 0.13), "orange": (0.95, 0.55, 0.10), "yellow": (0.92, 0.85, 0.18),
    "green": (0.20, 0.68, 0.25), "cyan": (0.15, 0.74, 0.80), "blue": (0.16, 0.30, 0.86),
    "purple": (0.55, 0.26, 0.76), "pink": (0.96, 0.52, 0.72),
}
BACKGROUND = {
    "black": (0.08, 0.08, 0.10), "slate": (0.26, 0.31, 0.38), "grey": (0.55, 0.55, 0.55),
    "sand": (0.80, 0.74, 0.60), "white": (0.93, 0.93, 0.92),
}
# Pixel statistics of meta_train at the defaults (100 classes x 600 images),
# measured once with measure_space(); the tests check they still hold.
SPACE = InputSpace(SIZE, (0.5293, 0.5133, 0.5027), (0.3033, 0.2825, 0.2668))


class SyntheticShapes(DatasetReader):
    """Procedural shapes; needs no files (``root`` is ignored)."""

    Options = SyntheticShapesOptions

    def load(self, split: str) -> SplitData:
        check_split(split, "synthetic-shapes")
        return share(_generate(split, self.options.classes, self.options.images_per_class))


# ---------------------------------------------------------------------- classes
@lru_cache(maxsize=8)
def class_table(classes: int = 100) -> dict[str, list[tuple[int, str, tuple[int, ...]]]]:
    """Per split: (global id, name, combination index tuple) of each class.

    Global ids index the sorted names of all ``classes`` classes; the split is
    64/16/20 (in proportion for other class counts).
    """
    combos = list(itertools.product(range(len(SHAPES)), range(len(TEXTURES)),
                                    range(len(FOREGROUND)), range(len(BACKGROUND))))
    g = torch.Generator().manual_seed(SEED)
    chosen = [combos[i] for i in torch.randperm(len(combos), generator=g)[:classes].tolist()]
    names = [class_name(c) for c in chosen]
    ids = {n: i for i, n in enumerate(sorted(names))}
    n_train, n_val = round(classes * 0.64), round(classes * 0.16)
    bounds = {"meta_train": (0, n_train), "meta_val": (n_train, n_train + n_val),
              "meta_test": (n_train + n_val, classes)}
    return {s: [(ids[names[i]], names[i], chosen[i]) for i in range(lo, hi)]
            for s, (lo, hi) in bounds.items()}


def class_name(combo: tuple[int, ...]) -> str:
    shape, texture, fg, bg = combo
    return f"{list(FOREGROUND)[fg]}-{TEXTURES[texture]}-{SHAPES[shape]}-on-{list(BACKGROUND)[bg]}"


@lru_cache(maxsize=6)
def _generate(split: str, classes: int, per_class: int) -> SplitData:
    table = class_table(classes)[split]
    images = torch.empty(len(table) * per_class, 3, SIZE, SIZE, dtype=torch.uint8)

    def work(k: int) -> None:
        gid, _, combo = table[k]
        g = torch.Generator().manual_seed(SEED * 1000 + gid + 1)
        render_class(combo, per_class, g, out=images[k * per_class:(k + 1) * per_class])

    # Each class depends on its own generator only, so threads cannot change
    # the bytes; torch releases the GIL inside ops, so they run in parallel.
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(work, range(len(table))))
    labels = torch.arange(len(table)).repeat_interleave(per_class)
    return make_split(images, labels, [n for _, n, _ in table], SPACE, f"synthetic-shapes/{split}",
                      [gid for gid, _, _ in table])


# ---------------------------------------------------------------------- drawing
# Images drawn per op: [10, 3, 32, 32] stays under torch's parallel grain size,
# so no op waits on intra-op threads (which costs 10-60x on a busy machine);
# the parallelism comes from drawing several classes at once instead.
_CHUNK = 10


def render_class(combo: tuple[int, ...], n: int, g: torch.Generator,
                 out: Tensor | None = None) -> Tensor:
    """``n`` uint8 images [n, 3, 32, 32] of one class, randomised by ``g``.

    All random numbers are drawn first, in a fixed order, then the pixels are
    computed in chunks, so the chunk size never changes the bytes.
    """
    out = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8) if out is None else out
    params = _draw_params(n, g)
    for lo in range(0, n, _CHUNK):
        part = {k: v[lo:lo + _CHUNK] for k, v in params.items()}
        out[lo:lo + _CHUNK] = _render(combo, part)
    return out


def _draw_params(n: int, g: torch.Generator) -> dict[str, Tensor]:
    """Every random number of ``n`` images, shaped to broadcast over pixels."""
    def rand(*size: int) -> Tensor:
        return torch.rand(n, *size, generator=g)

    def scalar(lo: float, span: float) -> Tensor:
        return (lo + rand() * span).view(n, 1, 1, 1)

    return {
        "cx": scalar(10.0, 12.0), "cy": scalar(10.0, 12.0), "radius": scalar(7.0, 5.0),
        "tan": scalar(-1.0, 2.0),  # tan(angle / 2): angle in [-90, 90] degrees ...
        "flip": (rand() < 0.5).float().view(n, 1, 1, 1) * 2.0 - 1.0,  # ... or a half turn
        "aspect": scalar(0.85, 0.3),
        "freq": scalar(2.0, 0.6), "phase_u": scalar(0.0, 1.0), "phase_v": scalar(0.0, 1.0),
        "fg_light": scalar(0.8, 0.4), "fg_tint": ((rand(3) * 2.0 - 1.0) * 0.07).view(n, 3, 1, 1),
        "bg_light": scalar(0.8, 0.4), "bg_tint": ((rand(3) * 2.0 - 1.0) * 0.07).view(n, 3, 1, 1),
        "grad_x": scalar(-0.2, 0.4), "grad_y": scalar(-0.2, 0.4),
        "dot_x": scalar(4.0, 24.0), "dot_y": scalar(4.0, 24.0), "dot_r": scalar(2.0, 2.5),
        "dot_on": (rand() < 0.5).float().view(n, 1, 1, 1), "dot_rgb": rand(3).view(n, 3, 1, 1),
        "noise": (rand(1, SIZE, SIZE) - 0.5) * 0.12,
    }


def _render(combo: tuple[int, ...], p: dict[str, Tensor]) -> Tensor:
    """Pixels of a chunk of images from their parameters ``p``."""
    shape, texture, fg, bg = combo
    u, v = _pose(p)
    mask = (0.5 - _SDF[SHAPES[shape]](u, v) * p["radius"]).clamp(0.0, 1.0)
    pattern = _texture(TEXTURES[texture], u, v, p)
    fg_rgb = _jitter(FOREGROUND[list(FOREGROUND)[fg]], p["fg_light"], p["fg_tint"])
    ink = fg_rgb * (1.0 - pattern * 0.62)  # texture = darker ink of the same colour
    canvas = _background(BACKGROUND[list(BACKGROUND)[bg]], p)
    canvas = _distractor(canvas, p)
    image = canvas + (ink - canvas) * mask
    image = image + p["noise"]
    return image.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


def _grid() -> tuple[Tensor, Tensor]:
    centres = torch.arange(SIZE, dtype=torch.float32) + 0.5
    return centres.view(1, 1, 1, SIZE), centres.view(1, 1, SIZE, 1)


_XS, _YS = _grid()


def _pose(p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Shape-frame coordinates (unit = shape radius) of every pixel, per image.

    The rotation uses the rational parametrisation of the circle
    (cos, sin) = ((1 - t^2), 2t) / (1 + t^2): exact arithmetic, no ``cos``.
    """
    t = p["tan"]
    cos = (1.0 - t * t) / (1.0 + t * t) * p["flip"]
    sin = 2.0 * t / (1.0 + t * t) * p["flip"]
    dx, dy = (_XS - p["cx"]) / p["radius"], (_YS - p["cy"]) / p["radius"]
    u = (dx * cos + dy * sin) * p["aspect"]
    v = (dy * cos - dx * sin) / p["aspect"]
    return u, v


def _length(u: Tensor, v: Tensor) -> Tensor:
    return torch.sqrt(u * u + v * v)


def _star(u: Tensor, v: Tensor) -> Tensor:
    r = _length(u, v)
    c = u / (r + 1e-6)  # cos(phi); cos(5 phi) = 16c^5 - 20c^3 + 5c
    c2 = c * c
    cos5 = c * (c2 * (c2 * 16.0 - 20.0) + 5.0)
    return r - (0.62 + cos5 * 0.3)


# Signed distance (negative inside) in units of the shape's radius.
_SDF = {
    "circle": lambda u, v: _length(u, v) - 0.9,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) - 0.75,
    "triangle": lambda u, v: torch.maximum(u.abs() * 0.866 + v * 0.5, -v) - 0.5,
    "cross": lambda u, v: torch.minimum(torch.maximum(u.abs() - 0.28, v.abs() - 0.85),
                                        torch.maximum(u.abs() - 0.85, v.abs() - 0.28)),
    "ring": lambda u, v: (_length(u, v) - 0.7).abs() - 0.22,
    "star": _star,
    "crescent": lambda u, v: torch.maximum(_length(u, v) - 0.9, 0.7 - _length(u - 0.45, v)),
    "bar": lambda u, v: torch.maximum(u.abs() - 0.95, v.abs() - 0.32),
}


def _frac(x: Tensor) -> Tensor:
    return x - torch.floor(x)


def _texture(name: str, u: Tensor, v: Tensor, p: dict[str, Tensor]) -> Tensor:
    """0/1 pattern in the shape's frame: 1 where the darker ink goes."""
    if name == "plain":
        return torch.zeros_like(u)
    a = u * p["freq"] + p["phase_u"]
    b = v * p["freq"] + p["phase_v"]
    if name == "stripes":
        return (_frac(a) < 0.5).float()
    if name == "checker":
        return _frac((torch.floor(a) + torch.floor(b)) * 0.5) * 2.0
    if name == "dots":
        da, db = _frac(a) - 0.5, _frac(b) - 0.5
        return (da * da + db * db < 0.1).float()
    return ((_frac(a) < 0.25) | (_frac(b) < 0.25)).float()  # grid


@lru_cache(maxsize=16)
def _colour(rgb: tuple[float, float, float]) -> Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)


def _jitter(rgb: tuple[float, float, float], light: Tensor, tint: Tensor) -> Tensor:
    """Per-image brightness and tint around a palette colour: [n, 3, 1, 1]."""
    return (_colour(rgb) * light + tint).clamp(0.0, 1.0)


def _background(rgb: tuple[float, float, float], p: dict[str, Tensor]) -> Tensor:
    """Jittered background colour plus a random linear light gradient."""
    colour = _jitter(rgb, p["bg_light"], p["bg_tint"])
    light = (_XS - 16.0) / 16.0 * p["grad_x"] + (_YS - 16.0) / 16.0 * p["grad_y"]
    return colour + light


def _distractor(canvas: Tensor, p: dict[str, Tensor]) -> Tensor:
    """A small disc of any colour, in about half of the images, behind the shape."""
    edge = _length(_XS - p["dot_x"], _YS - p["dot_y"]) - p["dot_r"]
    mask = (0.5 - edge).clamp(0.0, 1.0) * p["dot_on"]
    return canvas + (p["dot_rgb"] - canvas) * mask


def measure_space(classes: int = 100, per_class: int = 600) -> InputSpace:
    """Mean/std of meta_train's pixels (how :data:`SPACE` was obtained)."""
    x = _generate("meta_train", classes, per_class).images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).tolist()
    return InputSpace(SIZE, tuple(round(m, 4) for m in mean), tuple(round(s, 4) for s in std))
