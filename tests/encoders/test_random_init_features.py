"""The built-ins' deterministic initialisation must already separate what matters in H&E:
nuclear size (at equal stained area), nuclear density and stain intensity."""

import numpy as np
import pytest
import torch

from lrmil.encoders import build

# (nucleus radius px, nuclei per patch, hematoxylin darkness) for the two classes of each factor
FACTORS = {
    "size at equal area": ((2.5, 12, 1.0), (5.0, 3, 1.0)),
    "density": ((3.0, 6, 1.0), (3.0, 18, 1.0)),
    "stain intensity": ((3.0, 10, 1.0), (3.0, 10, 0.75)),
}


def he_patches(n, radius, count, darkness, seed, size=64):
    """Pink eosin background with purple hematoxylin disks at random places."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 3))
    for img in out:
        img[:] = (235, 170, 200)
        img += rng.normal(0, 6, img.shape)
        for _ in range(count):
            cy, cx = rng.uniform(0, size, 2)
            r = radius * rng.uniform(0.8, 1.2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[disk] = np.array((120, 60, 150)) / darkness + rng.normal(0, 6, (disk.sum(), 3))
    return torch.from_numpy(np.clip(out, 0, 255).astype(np.uint8))


def leave_one_out_accuracy(a, b):
    """Nearest class centroid on standardised features, each sample left out in turn."""
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    hits = 0
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        d = [np.linalg.norm(x[i] - x[rest & (y == c)].mean(0)) for c in (0, 1)]
        hits += int(np.argmin(d) == y[i])
    return hits / len(x)


def _accuracy(encode, factor):
    a, b = FACTORS[factor]
    return leave_one_out_accuracy(
        encode(he_patches(12, *a, seed=1)), encode(he_patches(12, *b, seed=2))
    )


@pytest.fixture(scope="module", params=["lrmil-cnn", "lrmil-vit-tiny"])
def encoder(request):
    return build(request.param)


@pytest.mark.parametrize("factor", list(FACTORS))
def test_random_init_separates_tissue_factors(encoder, factor):
    enc = encoder
    assert _accuracy(lambda p: enc.encode(p).numpy(), factor) >= 0.9


def test_size_is_invisible_to_mean_colour():
    # The size factor is not solvable from colour alone: the encoders see texture.
    assert _accuracy(lambda p: p.float().mean(dim=(1, 2)).numpy(), "size at equal area") < 0.7
