"""PNG pictures: image grids (memory, datasets) and simple line curves.

Pillow only, so headless machines need nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, pad: int = 2,
              scale: int = 1) -> Path:
    """Save float images [N, 3, H, W] with values in [0, 1] as one PNG grid."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, _, h, w = images.shape
    nrow = max(1, min(nrow, n))
    rows = (n + nrow - 1) // nrow
    canvas = torch.ones(3, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h,
               pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(array)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def save_curve(xs: Sequence[float], ys: Sequence[float], path: str | Path, title: str = "",
               ylabel: str = "", size: tuple[int, int] = (480, 320), xlabel: str = "",
               reference: float | None = None) -> Path:
    """A minimal line plot (axes with their labels, ticks, one curve) as PNG;
    ``reference`` adds a dashed horizontal line at that value (a target)."""
    width, height = size
    left, right, top, bottom = 56, 16, 28, 48
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    draw.text((left, 6), title, fill="black")
    x0, x1 = left, width - right
    y0, y1 = height - bottom, top
    draw.line([(x0, y0), (x1, y0)], fill="black")
    draw.line([(x0, y0), (x0, y1)], fill="black")
    if xs:
        lo, hi = min(ys), max(ys)
        if reference is not None:
            lo, hi = min(lo, reference), max(hi, reference)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        xmin, xmax = min(xs), max(xs)
        span = (xmax - xmin) or 1.0
        pts = [(x0 + (x - xmin) / span * (x1 - x0), y0 - (y - lo) / (hi - lo) * (y0 - y1))
               for x, y in zip(xs, ys)]
        if reference is not None:
            y_ref = y0 - (reference - lo) / (hi - lo) * (y0 - y1)
            for start in range(x0, x1, 8):
                draw.line([(start, y_ref), (min(start + 4, x1), y_ref)], fill=(214, 39, 40))
        if len(pts) > 1:
            draw.line(pts, fill=(31, 119, 180), width=2)
        for p in pts:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=(31, 119, 180))
        for frac in (0.0, 0.5, 1.0):
            value = lo + frac * (hi - lo)
            y = y0 - frac * (y0 - y1)
            draw.text((4, y - 6), f"{value:.3g}", fill="black")
            x = x0 + frac * (x1 - x0)
            draw.text((x - 12, y0 + 6), f"{xmin + frac * span:.0f}", fill="black")
    draw.text((4, y1 - 20), ylabel, fill="black")
    if xlabel:  # centred under the tick labels
        text_width = draw.textlength(xlabel)
        draw.text(((x0 + x1 - text_width) / 2, y0 + 24), xlabel, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
