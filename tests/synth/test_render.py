"""Rendering: deterministic from the seed, boxes agree at their seams, H&E-like colours."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from lrmil.errors import ConfigError
from lrmil.synth import make_scene, write_slide
from lrmil.synth.noise import ValueNoise, hash_uniform, interpolate
from lrmil.synth.render import compiled_scene, render_box


@pytest.fixture(scope="module")
def scene():
    return make_scene(7, 2048, 2048, "positive")


def test_a_box_is_the_crop_of_any_larger_box(scene):
    big = render_box(scene, 512, 640, 768, 512)
    small = render_box(scene, 812, 840, 256, 200)
    np.testing.assert_array_equal(big[200:400, 300:556], small)


def test_noise_is_a_function_of_global_coordinates():
    noise = ValueNoise(3, 37.0)
    xs, ys = np.arange(100, 400), np.arange(-50, 250)
    np.testing.assert_array_equal(
        noise.grid(xs, ys)[60:90, 10:200], noise.grid(xs[10:200], ys[60:90])
    )


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("step", [1, 16])  # a grid finer, and one coarser than the lattice
def test_interpolate_matches_the_pointwise_formula(smooth, step):
    """interpolate() reads only the nodes it needs (none that a coordinate on a node weighs
    by 0), and gives, bit for bit, the four-node formula at every point."""

    def lattice(jy, jx):
        return hash_uniform(4, jy, jx)

    xs, ys = np.arange(-40, 600, step), np.arange(3, 400, step + step // 2)
    fx, fy = xs / 8, ys / 8
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    tx, ty = (fx - ix).astype(np.float32), (fy - iy).astype(np.float32)
    if smooth:
        tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    jy, jx = iy[:, None], ix[None, :]
    top = lattice(jy, jx) + tx * (lattice(jy, jx + 1) - lattice(jy, jx))
    bottom = lattice(jy + 1, jx) + tx * (lattice(jy + 1, jx + 1) - lattice(jy + 1, jx))
    expected = top + ty[:, None] * (bottom - top)
    np.testing.assert_array_equal(interpolate(lattice, xs, ys, 8, smooth), expected)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def digest(name: str, seed: int, threads: int = 1) -> str:
        path = tmp_path / name
        write_slide(path, 1536, 1280, seed=seed, label="positive", threads=threads)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    one_thread = digest("a.svs", 1)
    assert digest("b.svs", 1) == one_thread
    assert digest("c.svs", 1, threads=2) == one_thread  # boxes rendered in parallel threads
    assert digest("d.svs", 2) != one_thread
    assert not list(tmp_path.glob(".*partial"))


def test_compiled_tissue_matches_the_scene(scene):
    """The renderer's tissue field is the scene's (which placed the regions inside tissue),
    including the all-glass shortcut of a box far from every island."""
    core = compiled_scene(scene)
    for x0, y0, width, height in [(300, 700, 600, 400), (1500, 200, 300, 500), (0, 0, 200, 150)]:
        expected = scene.tissue(
            np.arange(x0, x0 + width, dtype=np.float32),
            np.arange(y0, y0 + height, dtype=np.float32),
        )
        np.testing.assert_allclose(core.tissue(x0, y0, width, height), expected, atol=2e-4)
    assert core.tissue(0, 0, 200, 150).max() == 0  # a glass corner
    inside = core.tissue(300, 700, 600, 400)
    assert inside.max() == 1 and inside.min() == 0  # the first box crosses an island's edge


def test_regions_render_as_dense_nuclei(scene):
    """Every region is rendered: its centre is darker than the same tissue without regions."""
    core, plain = compiled_scene(scene), compiled_scene(dataclasses.replace(scene, regions=[]))
    assert scene.regions
    for region in scene.regions:
        box = (int(region.x) - 20, int(region.y) - 20, 40, 40)
        darker = plain.render(*box).astype(float).mean() - core.render(*box).astype(float).mean()
        assert darker > 10, (region.kind, darker)


def test_scene_is_deterministic(scene):
    again = make_scene(7, 2048, 2048, "positive")
    assert again.regions == scene.regions
    np.testing.assert_array_equal(
        again.populations["tumour"].stamps, scene.populations["tumour"].stamps
    )
    assert make_scene(8, 2048, 2048, "positive").regions != scene.regions


def test_only_positive_slides_carry_foci_in_place_of_confounders():
    for seed in range(4):
        negative = make_scene(seed, 2048, 2048, "negative").regions
        positive = make_scene(seed, 2048, 2048, "positive").regions
        assert not any(r.kind == "focus" for r in negative)
        assert any(r.kind == "focus" for r in positive)
        assert {r.kind for r in negative} <= {"lymph", "nest"} and negative
        # foci replace confounders: the count and size of dense regions do not tell the class
        assert len(positive) == len(negative)


def test_colours_are_h_and_e_like(scene):
    rgb = render_box(scene, 0, 0, 2048, 2048)[::4, ::4].reshape(-1, 3).astype(int)
    glass = rgb.min(axis=1) > 225
    assert 0.1 < glass.mean() < 0.9  # tissue islands on white glass
    tissue = rgb[~glass]
    r, g, b = tissue.T
    assert np.median(g) < np.median(r) and np.median(g) < np.median(b)  # pink / purple
    assert (b > r).mean() > 0.05  # hematoxylin-blue nuclei present


def test_stain_varies_between_slides():
    a, b = make_scene(1, 1024, 1024, "negative"), make_scene(2, 1024, 1024, "negative")
    assert not np.allclose(a.h_vector, b.h_vector)
    assert a.e_scale != b.e_scale


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": "maybe"}, "label"),
        ({"width": 100}, "at least 256"),
        ({"mpp": 0.0}, "mpp"),
        ({"block": 300}, "block"),
        ({"quality": 0}, "quality"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"width": 512, "height": 512, "label": "negative", **kwargs}
    with pytest.raises(ConfigError, match=message):
        write_slide(tmp_path / "x.svs", args.pop("width"), args.pop("height"), **args)
