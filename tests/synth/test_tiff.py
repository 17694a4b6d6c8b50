"""The pyramidal TIFF writer, on synthetic slides and on a plain gradient."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from lrmil.synth.tiff import TILE, downsample4, level_sizes, write_pyramid


def test_openslide_reads_levels_mpp_and_power(synth_slide_path):
    with openslide.OpenSlide(synth_slide_path) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert slide.level_count >= 3
        assert slide.level_dimensions[:3] == ((2048, 1536), (512, 384), (128, 96))
        assert slide.level_downsamples[:3] == pytest.approx((1, 4, 16))
        assert float(slide.properties["openslide.mpp-x"]) == 0.5
        assert float(slide.properties["openslide.mpp-y"]) == 0.5
        assert float(slide.properties["openslide.objective-power"]) == 20
        region = np.asarray(slide.read_region((1000, 700), 0, (300, 200)).convert("RGB"))
    assert region.shape == (200, 300, 3)
    assert region.std() > 5  # tissue, not a blank page


def test_levels_are_top_level_pages_not_subifds(synth_slide_path):
    with tifffile.TiffFile(synth_slide_path) as tif:
        assert len(tif.pages) == 3  # 2048, 512, 128
        assert all(page.is_tiled and page.compression == 7 for page in tif.pages)
        assert not any(page.subifds for page in tif.pages)


def test_level_sizes():
    assert level_sizes(20000, 20000) == [
        (20000, 20000),
        (5000, 5000),
        (1250, 1250),
        (312, 312),
        (78, 78),
    ]
    assert level_sizes(1024, 300) == [(1024, 300), (256, 75), (64, 18)]
    assert level_sizes(100, 100) == [(100, 100)]


def test_downsample4_is_the_rounded_block_mean():
    image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    small = downsample4(image)
    expected = image.reshape(2, 4, 3, 4, 3).astype(float).mean(axis=(1, 3))
    assert small.shape == (2, 3, 3)
    assert np.abs(small - expected).max() <= 0.5


@pytest.mark.parametrize("crop", [np.s_[:, :], np.s_[3:, 5:-2]])  # contiguous, strided view
def test_downsample4_drops_partial_blocks(crop):
    image = np.random.default_rng(0).integers(0, 256, (70, 103, 3), dtype=np.uint8)[crop]
    h, w = image.shape[0] // 4, image.shape[1] // 4
    blocks = image[: 4 * h, : 4 * w].reshape(h, 4, w, 4, 3).sum(axis=(1, 3), dtype=np.uint32)
    np.testing.assert_array_equal(downsample4(image), (blocks + 8) // 16)


def test_reduced_levels_are_area_averages_of_level0(tmp_path):
    width, height = 1100, 700  # not multiples of the tile or band
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack(
        [xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1
    ).astype(np.uint8)
    calls = []

    def render(x0, y0, w, h):
        calls.append((x0, y0, w, h))
        return image[y0 : y0 + h, x0 : x0 + w]

    sizes = write_pyramid(tmp_path / "g.svs", width, height, render, mpp=0.25, quality=95)
    assert max(w for _, _, w, _ in calls) == 512 and len(calls) == 6  # 3 x 2 blocks
    with tifffile.TiffFile(tmp_path / "g.svs") as tif:
        level0, level1 = tif.pages[0].asarray(), tif.pages[1].asarray()
        assert "AppMag = 40|MPP = 0.25" in tif.pages[0].description
    assert sizes[1] == (275, 175)
    # JPEG at q95 on a smooth gradient: small error
    assert np.abs(level0.astype(int) - image).mean() < 2
    assert np.abs(level1.astype(int) - downsample4(image)).mean() < 2


def test_band_must_hold_whole_tile_rows(tmp_path):
    with pytest.raises(ValueError, match="band"):
        write_pyramid(tmp_path / "x.svs", 512, 512, lambda *a: None, band=300)


def test_repeated_tiles_are_reused_only_when_identical(tmp_path):
    """Tiles alike everywhere the encoder's cache key samples them, but with a distinct patch
    each: every tile must still decode to its own patch."""
    width, height = 1024, 768
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx % TILE, yy % TILE, (xx + yy) % TILE], -1).astype(np.uint8)
    for k, (y, x) in enumerate(np.ndindex(height // TILE, width // TILE)):
        if k % 2:  # half the tiles stay exact repeats
            image[y * TILE + 8 : y * TILE + 24, x * TILE + 8 : x * TILE + 24] = 20 * k

    write_pyramid(
        tmp_path / "r.svs", width, height, lambda x0, y0, w, h: image[y0 : y0 + h, x0 : x0 + w]
    )
    with tifffile.TiffFile(tmp_path / "r.svs") as tif:
        level0 = tif.pages[0].asarray()
    assert np.abs(level0.astype(int) - image).mean() < 2
    patches = level0.reshape(height // TILE, TILE, width // TILE, TILE, 3)[:, 8:24, :, 8:24]
    expected = image.reshape(height // TILE, TILE, width // TILE, TILE, 3)[:, 8:24, :, 8:24]
    assert np.abs(patches.astype(int) - expected).mean(axis=(1, 3, 4)).max() < 4
