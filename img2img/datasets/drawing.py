"""Drawing the synthetic demo images: 1-3 non-overlapping shapes, 4x supersampled, from a seeded stream.

Image i of a set depends only on (seed, set, split, i), so a larger count adds images without
changing the first ones, and the same seed gives byte-identical files.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # draw large, then average down: smooth edges, still deterministic

# Fill colours of the outlines set: one per kind, so the target is a function of the drawing.
_OUTLINE_FILL = {"circle": (220, 60, 60), "square": (50, 110, 220), "triangle": (60, 170, 80)}


@dataclass(frozen=True)
class _Shape:
    kind: str  # circle, square, triangle
    cx: float
    cy: float
    r: float  # circumradius
    angle: float


def _layout(rng: np.random.Generator, size: int) -> list[_Shape]:
    """1-3 shapes that do not overlap and stay inside the image."""
    shapes: list[_Shape] = []
    wanted = int(rng.integers(1, 4))
    for _ in range(60):
        if len(shapes) == wanted:
            break
        r = float(rng.uniform(0.13, 0.27)) * size
        cx, cy = (float(v) for v in rng.uniform(r + 2, size - r - 2, size=2))
        kind = ("circle", "square", "triangle")[int(rng.integers(3))]
        angle = float(rng.uniform(0, 2 * math.pi))
        if all(math.hypot(cx - s.cx, cy - s.cy) > r + s.r + 3 for s in shapes):
            shapes.append(_Shape(kind, cx, cy, r, angle))
    return shapes


def _polygon(shape: _Shape, scale: float) -> list[tuple[float, float]]:
    corners = 4 if shape.kind == "square" else 3
    r = shape.r * (0.85 if shape.kind == "square" else 1.0)
    return [
        ((shape.cx + r * math.cos(shape.angle + 2 * math.pi * k / corners)) * scale,
         (shape.cy + r * math.sin(shape.angle + 2 * math.pi * k / corners)) * scale)
        for k in range(corners)
    ]


def _draw(shapes: list[_Shape], size: int, background, fills, outline=None, outline_width: float = 0.0) -> Image.Image:
    s = SUPERSAMPLE
    im = Image.new("RGB", (size * s, size * s), tuple(background))
    draw = ImageDraw.Draw(im)
    width = max(1, round(outline_width * s)) if outline is not None else 0
    for shape, fill in zip(shapes, fills):
        if shape.kind == "circle":
            r = shape.r * 0.8
            box = [(shape.cx - r) * s, (shape.cy - r) * s, (shape.cx + r) * s, (shape.cy + r) * s]
            draw.ellipse(box, fill=fill, outline=outline, width=width)
        else:
            draw.polygon(_polygon(shape, s), fill=fill, outline=outline, width=width)
    return im.reduce(s)


def _hsv(h: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, sat, val)
    return round(r * 255), round(g * 255), round(b * 255)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def shapes_image(seed: int, domain: int, split: int, index: int, size: int) -> Image.Image:
    """Domain 0: warm shapes on a light background; domain 1: cool shapes on a dark background;
    domain 2: green shapes on a mid-grey background."""
    rng = _rng(seed, 1, domain, split, index)
    shapes = _layout(rng, size)
    if domain == 2:
        background = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.1), rng.uniform(0.45, 0.6))
        fills = [_hsv(rng.uniform(80, 150) / 360, rng.uniform(0.6, 1.0), rng.uniform(0.7, 0.95)) for _ in shapes]
    elif domain == 0:
        background = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.12), rng.uniform(0.85, 0.97))
        fills = [_hsv(rng.uniform(-15, 50) / 360, rng.uniform(0.7, 1.0), rng.uniform(0.85, 1.0)) for _ in shapes]
    else:
        background = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.08, 0.25))
        fills = [_hsv(rng.uniform(170, 270) / 360, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)) for _ in shapes]
    return _draw(shapes, size, background, fills)


def outline_pair(seed: int, split: int, index: int, size: int) -> tuple[Image.Image, Image.Image]:
    rng = _rng(seed, 2, split, index)
    shapes = _layout(rng, size)
    white, black = (255, 255, 255), (0, 0, 0)
    drawing = _draw(shapes, size, white, [None] * len(shapes), outline=black, outline_width=size / 32)
    filled = _draw(shapes, size, white, [_OUTLINE_FILL[s.kind] for s in shapes], outline=black, outline_width=size / 32)
    return drawing, filled
