"""Grid math, without a slide."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrmil.errors import ConfigError
from lrmil.tiling import TilingConfig
from lrmil.tiling.grid import (
    box_fractions,
    child_coords,
    geometry,
    integral_image,
    lr_grid,
)


@pytest.mark.parametrize(
    ("level0_mag", "lr", "hr", "size", "hr0", "lr0"),
    [
        (20, 5, 20, 256, 256, 1024),
        (40, 5, 20, 256, 512, 2048),
        (10 / 0.499, 5, 20, 256, 257, 1028),  # real 0.499 mpp: children still tile exactly
        (40, 10, 20, 224, 448, 896),
    ],
)
def test_geometry_integer_sides(level0_mag, lr, hr, size, hr0, lr0):
    geo = geometry(level0_mag, lr, hr, size)
    assert (geo.hr_size0, geo.lr_size0) == (hr0, lr0)
    assert geo.lr_size0 == geo.r * geo.hr_size0
    assert geo.k == geo.r**2


def test_lr_grid_full_patches_row_major():
    coords = lr_grid(2500, 1100, 1000)
    assert coords.dtype == np.int64
    assert coords.tolist() == [[0, 0], [1000, 0]]
    assert lr_grid(999, 5000, 1000).shape == (0, 2)
    assert lr_grid(3000, 2000, 1000).tolist() == [
        [0, 0], [1000, 0], [2000, 0], [0, 1000], [1000, 1000], [2000, 1000]
    ]  # fmt: skip


def test_children_order_and_containment():
    parents = np.array([[0, 0], [1024, 2048]], dtype=np.int64)
    children = child_coords(parents, r=4, hr_size0=256)
    assert children.shape == (2, 16, 2)
    # child k = v * r + u at column u, row v
    assert children[1, 0].tolist() == [1024, 2048]
    assert children[1, 1].tolist() == [1280, 2048]
    assert children[1, 4].tolist() == [1024, 2304]
    assert children[1, 15].tolist() == [1024 + 768, 2048 + 768]
    # every child lies inside its parent, and together they cover it exactly once
    lo, hi = parents[:, None, :], parents[:, None, :] + 1024
    assert ((children >= lo) & (children + 256 <= hi)).all()
    assert len({tuple(c) for c in children[0].tolist()}) == 16


@settings(max_examples=50, deadline=None)
@given(
    st.integers(8, 40),
    st.integers(8, 40),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
)
def test_box_fractions_match_brute_force(h, w, size_px, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.4
    scale = 0.125  # one mask pixel per 8 level-0 pixels
    size0 = size_px * 8
    ys, xs = np.mgrid[0 : h - size_px + 1, 0 : w - size_px + 1]
    corners = np.stack([xs.ravel(), ys.ravel()], axis=1) * 8
    got = box_fractions(integral_image(mask), corners, size0, (scale, scale))
    want = [mask[y // 8 : y // 8 + size_px, x // 8 : x // 8 + size_px].mean() for x, y in corners]
    np.testing.assert_allclose(got, want)


def test_box_fractions_keep_leading_shape_and_clip():
    mask = np.ones((4, 4), bool)
    corners = np.array([[[0, 0], [30, 30]]])  # second box hangs off the mask: clipped
    got = box_fractions(integral_image(mask), corners, 8, (0.125, 0.125))
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr_mag": 3, "hr_mag": 20}, "--lr-mag 3 must divide --hr-mag 20"),
        ({"lr_mag": 20, "hr_mag": 20}, "r >= 2"),
        ({"patch_size": 4}, "--patch-size"),
        ({"tissue_threshold": 1.5}, "--tissue-threshold"),
        ({"lr_mag": 0}, "> 0"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TilingConfig(**kwargs)


def test_config_round_trip():
    config = TilingConfig(lr_mag=2.5, hr_mag=10, patch_size=224)
    assert config.r == 4
    assert TilingConfig.from_dict(config.to_dict()) == config


def test_config_from_dict_names_the_source():
    with pytest.raises(ConfigError, match=r"my.yaml: unknown setting\(s\) tissue.radius; known"):
        TilingConfig.from_dict({"tissue": {"radius": 3}}, source="my.yaml")
    with pytest.raises(ConfigError, match="my.yaml: patch_size must be an integer, got .big."):
        TilingConfig.from_dict({"patch_size": "big"}, source="my.yaml")
