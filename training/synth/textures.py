"""Procedural, tileable textures for floors, walls, boxes and the distant background.

Every texture is ``(N, N, 3) uint8`` RGB and periodic with period ``N`` in both axes, so it can be
sampled with ``cv2.remap(..., borderMode=cv2.BORDER_WRAP)`` without seams. :class:`MipTexture`
adds a blurred level and the mean colour to limit aliasing at grazing angles.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

TEXTURE_SIZE = 256
BANK_SIZE = 384  # textures in the shared bank (generated lazily, ~0.4 MB each)
BANK_SEED = 0x7E47
KINDS = ("noise", "checker", "stripes", "tiles", "marble", "shapes", "plain")


def _periodic_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Smooth periodic value noise ``(size, size, channels)`` float32 in [0, 1]."""
    grid = rng.random((cells, cells, channels), dtype=np.float32)
    tiled = np.tile(grid, (3, 3, 1))
    big = cv2.resize(tiled, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
    if big.ndim == 2:
        big = big[:, :, None]
    return np.clip(big[size : 2 * size, size : 2 * size], 0.0, 1.0)


def fractal_noise(rng: np.random.Generator, size: int, channels: int = 1) -> np.ndarray:
    """Periodic multi-octave noise ``(size, size, channels)`` float32 in [0, 1]."""
    out = np.zeros((size, size, channels), np.float32)
    total = 0.0
    amp = 1.0
    cells = int(rng.choice([2, 4, 8]))
    while cells <= size // 2:
        out += amp * _periodic_noise(rng, size, cells, channels)
        total += amp
        amp *= float(rng.uniform(0.4, 0.65))
        cells *= 2
    return out / total


def random_color(rng: np.random.Generator, saturation: float | None = None) -> np.ndarray:
    """A random RGB colour in [0, 1] (HSV sampled; moderate saturation by default)."""
    h = rng.uniform(0.0, 1.0)
    s = rng.uniform(0.05, 0.8) if saturation is None else saturation
    v = rng.uniform(0.2, 0.95)
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32)


def make_texture(rng: np.random.Generator, kind: str | None = None, size: int = TEXTURE_SIZE):
    """A random tileable texture ``(size, size, 3) uint8``; ``kind`` in :data:`KINDS`."""
    kind = kind or str(rng.choice(KINDS, p=[0.2, 0.15, 0.12, 0.15, 0.12, 0.16, 0.1]))
    c0, c1 = random_color(rng), random_color(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "noise":
        n = fractal_noise(rng, size, 1)
        img = c0 * (1 - n) + c1 * n
    elif kind == "checker":
        k = int(rng.choice([2, 4, 8, 16]))
        m = ((np.floor(xx * k) + np.floor(yy * k)) % 2)[..., None]
        img = c0 * (1 - m) + c1 * m
    elif kind == "stripes":
        fx, fy = int(rng.integers(0, 9)), int(rng.integers(1, 9))
        phase = np.sin(2 * np.pi * (fx * xx + fy * yy))[..., None]
        sharp = float(rng.uniform(1.0, 8.0))
        m = 0.5 + 0.5 * np.tanh(sharp * phase)
        img = c0 * (1 - m) + c1 * m
    elif kind == "tiles":
        k = int(rng.choice([2, 3, 4, 6, 8]))
        grout = float(rng.uniform(0.02, 0.08))
        tile_id = (np.floor(xx * k) + k * np.floor(yy * k)).astype(np.int64)
        jitter = rng.uniform(0.85, 1.15, size=k * k).astype(np.float32)[tile_id][..., None]
        fx, fy = (xx * k) % 1.0, (yy * k) % 1.0
        line = ((fx < grout) | (fy < grout))[..., None]
        img = np.where(line, c1 * 0.6, c0 * jitter)
    elif kind == "marble":
        n = fractal_noise(rng, size, 1)[..., 0]
        f = int(rng.integers(1, 6))
        m = (0.5 + 0.5 * np.sin(2 * np.pi * (f * xx + rng.uniform(2, 6) * n)))[..., None]
        img = c0 * (1 - m) + c1 * m
    elif kind == "shapes":
        img = np.empty((size, size, 3), np.float32)
        img[:] = c0
        for _ in range(int(rng.integers(5, 30))):
            col = tuple(float(v) for v in random_color(rng))
            shape = int(rng.integers(0, 3))
            x, y = (int(v) for v in rng.integers(0, size, 2))
            r = int(rng.integers(4, size // 4))
            th = int(rng.choice([-1, 2, 4]))
            w, h = (int(v) for v in rng.integers(4, size // 3, 2))
            x2, y2 = (int(v) for v in rng.integers(0, size, 2))
            for dy in (-size, 0, size):  # the 9 periodic copies: shapes wrap across edges
                for dx in (-size, 0, size):
                    if shape == 0:
                        cv2.circle(img, (x + dx, y + dy), r, col, th)
                    elif shape == 1:
                        cv2.rectangle(img, (x + dx, y + dy), (x + dx + w, y + dy + h), col, th)
                    else:
                        cv2.line(img, (x + dx, y + dy), (x2 + dx, y2 + dy), col, max(th, 1))
    else:  # plain
        img = np.empty((size, size, 3), np.float32)
        img[:] = c0
    # Fine grain on everything (surfaces are never perfectly flat in colour).
    grain = float(rng.uniform(0.0, 0.12))
    if grain > 0:
        img = img * (1 - grain + 2 * grain * fractal_noise(rng, size, 1))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _wrap_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    pad = int(3 * sigma) + 1
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="wrap")
    blurred = cv2.GaussianBlur(padded, (0, 0), sigma)
    return blurred[pad:-pad, pad:-pad]


@dataclass
class MipTexture:
    """A texture (uint8 RGB) with a blurred level (~4x coarser) and its mean colour (float32 RGB
    in [0, 1]); :meth:`sample` returns float32 colours in [0, 1]."""

    sharp: np.ndarray
    blurred: np.ndarray
    mean: np.ndarray

    @classmethod
    def from_image(cls, img: np.ndarray) -> MipTexture:
        f = img.astype(np.float32)
        blurred = np.clip(_wrap_blur(f, 2.5) + 0.5, 0, 255).astype(np.uint8)
        return cls(sharp=img, blurred=blurred, mean=f.reshape(-1, 3).mean(0) / 255.0)

    @property
    def size(self) -> int:
        return self.sharp.shape[0]

    def sample(self, u: np.ndarray, v: np.ndarray, texels_per_pixel: np.ndarray) -> np.ndarray:
        """Colours ``(n, 3)`` at texture coordinates ``u, v (n,)`` in tiles (1 = one period),
        blending levels by the pixel footprint in texels."""
        n = self.size
        count = len(u)
        rows = max(1, -(-count // 1024))  # cv2.remap needs maps under 32767 px per side
        mu = np.zeros(rows * 1024, np.float32)
        mv = np.zeros(rows * 1024, np.float32)
        # Keep coordinates small so float32 keeps sub-texel precision (the texture is periodic).
        mu[:count] = np.asarray(u, np.float32) * np.float32(n)
        mv[:count] = np.asarray(v, np.float32) * np.float32(n)
        np.mod(mu, n, out=mu)
        np.mod(mv, n, out=mv)
        mu, mv = mu.reshape(rows, 1024), mv.reshape(rows, 1024)
        level = np.log2(np.maximum(texels_per_pixel, 1e-6, dtype=np.float32)).reshape(-1, 1)
        w_blur = np.clip((level - 0.5) * 0.5, 0.0, 1.0)
        w_mean = np.clip((level - 3.0) * 0.5, 0.0, 1.0)
        scale = np.float32(1.0 / 255.0)
        sharp = cv2.remap(self.sharp, mu, mv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        out = sharp.reshape(-1, 3)[:count].astype(np.float32)
        if np.any(w_blur > 0):
            blurred = cv2.remap(self.blurred, mu, mv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
            out += (blurred.reshape(-1, 3)[:count] - out) * w_blur
        out *= scale
        out += (self.mean.astype(np.float32) - out) * w_mean
        return out


@functools.lru_cache(maxsize=BANK_SIZE)
def texture_bank(index: int) -> MipTexture:
    """Texture ``index`` of a fixed bank of :data:`BANK_SIZE` random textures (the same in every
    process: it depends only on the index), generated on first use."""
    if not 0 <= index < BANK_SIZE:
        raise IndexError(f"texture index {index} outside the bank of {BANK_SIZE}")
    return MipTexture.from_image(make_texture(np.random.default_rng([BANK_SEED, index])))
