"""Deterministic, well-conditioned first-layer filters for the built-in encoders.

A randomly initialised network gives poor features on H&E; a stem made of stain / colour-opponent
projections, blob detectors (differences of Gaussians: nuclear size) and oriented edges (texture)
gives features that separate the things that matter before any training. Every filter is used
with both signs so that the ReLU after it keeps the information of either polarity.
"""

from __future__ import annotations

import math

import torch

# Colour directions in RGB. The stain vectors are Ruifrok & Johnston's optical densities; a dark
# pixel in a channel is a high density there, so a stain's amount is about -(vector . RGB).
COLOURS = {
    "luminance": (1.0, 1.0, 1.0),
    "hematoxylin": (-0.65, -0.70, -0.29),
    "eosin": (-0.07, -0.99, -0.11),
    "red_green": (1.0, -1.0, 0.0),
    "blue_yellow": (-0.5, -0.5, 1.0),
    "red_blue": (1.0, 0.0, -1.0),
}


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.meshgrid(r, r, indexing="ij")


def gaussian(size: int, sigma: float) -> torch.Tensor:
    y, x = _grid(size)
    g = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    return g / g.sum()


def difference_of_gaussians(size: int, sigma: float) -> torch.Tensor:
    """Centre-surround blob detector tuned to blobs of radius ~ sigma * sqrt(2); zero mean."""
    return _unit(gaussian(size, sigma) - gaussian(size, 1.6 * sigma))


def gabor(size: int, theta: float, wavelength: float) -> torch.Tensor:
    """Odd (edge-like) oriented filter; zero mean."""
    y, x = _grid(size)
    u = x * math.cos(theta) + y * math.sin(theta)
    g = torch.exp(-(x**2 + y**2) / (2 * (wavelength / 2) ** 2)) * torch.sin(
        2 * math.pi * u / wavelength
    )
    return _unit(g - g.mean())


def colour(name: str) -> torch.Tensor:
    return _unit(torch.tensor(COLOURS[name], dtype=torch.float64))


def stem_bank(size: int, scales: tuple[float, ...]) -> torch.Tensor:
    """(C, 3, size, size) filters: smoothed colour directions, blobs on the two stains at each
    scale, and four edge orientations on luminance; each filter with both signs, unit norm."""
    spatial_colour = []
    smooth = gaussian(size, size / 6)
    for name in COLOURS:
        spatial_colour.append((smooth, colour(name)))
    for sigma in scales:
        for name in ("hematoxylin", "eosin"):
            spatial_colour.append((difference_of_gaussians(size, sigma), colour(name)))
    for k in range(4):
        spatial_colour.append((gabor(size, k * math.pi / 4, size / 2), colour("luminance")))
    filters = []
    for spatial, rgb in spatial_colour:
        f = _unit(rgb[:, None, None] * spatial[None])
        filters += [f, -f]
    return torch.stack(filters).float()


def orthogonal(shape: tuple[int, ...], gain: float, generator: torch.Generator) -> torch.Tensor:
    """An orthogonal matrix of shape (rows, prod(rest)) reshaped to `shape`: keeps the signal's
    energy through a random layer instead of letting it grow or vanish."""
    rows, cols = shape[0], math.prod(shape[1:])
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small QRs: threads only add overhead (5x on a busy machine)
    try:
        q, r = torch.linalg.qr(a)
    finally:
        torch.set_num_threads(threads)
    q = q * torch.sign(torch.diagonal(r))
    if rows < cols:
        q = q.T
    return (gain * q[:rows, :cols]).reshape(shape)
