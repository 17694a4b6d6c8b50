"""Opening slides, mpp resolution and reads at a target magnification."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrmil.errors import ConfigError, FileFormatError, SlideError
from lrmil.wsi import load_mpp_csv, open_slide, override_for
from lrmil.wsi.mpp import resolve_mpp


def _png(path: Path, width: int = 300, height: int = 200) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_real_slide_mpp_and_reads(real_slide_path):
    with open_slide(real_slide_path) as slide:
        assert slide.name == "cmu_small_region"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.magnification == pytest.approx(10 / 0.499)
        patch = slide.read_region(1000, 1000, 1024, 256)
        assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8
        assert patch.std() > 10  # real tissue, not a blank read
        thumb = slide.thumbnail(256)
        assert max(thumb.size) == 256 and thumb.mode == "RGB"


def test_reads_from_the_best_level_and_matches_level0(synth_slide_path, monkeypatch):
    with open_slide(synth_slide_path) as slide:
        assert slide.level_downsamples[:2] == (1.0, 4.0)
        assert slide.magnification == pytest.approx(20)
        levels: list[int] = []
        read = slide._backend.read
        monkeypatch.setattr(
            slide._backend, "read", lambda level, *a: levels.append(level) or read(level, *a)
        )
        lr = slide.read_region(512, 512, 1024, 256)  # 5x: the 5x level serves it natively
        hr = slide.read_region(512, 512, 1024, 1024)  # 20x: level 0
        mid = slide.read_region(512, 512, 1024, 512)  # 10x: no level, reduce level 0 by 2
        assert levels == [1, 0, 0]
        assert mid.shape == (512, 512, 3)
        # The pyramid's 5x level and level 0 reduced in bulk show the same pixels.
        reduced = np.asarray(Image.fromarray(hr).reduce(4), dtype=np.float64)
        assert np.abs(reduced - lr).mean() < 6


def test_read_outside_the_slide_is_white(tmp_path):
    with open_slide(_png(tmp_path / "img.png", 64, 64), mpp=0.5) as slide:
        region = slide.read(32, 32, 64, 64, 64, 64)
    assert (region[40:, :] == 255).all() and (region[:, 40:] == 255).all()
    assert not (region[:32, :32] == 255).all()


def test_plain_image_needs_an_mpp(tmp_path):
    path = _png(tmp_path / "plain.png")
    with pytest.raises(SlideError, match=r"plain\.png.*no mpp.*--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.magnification == pytest.approx(40)
        assert slide.dimensions == (300, 200)
        assert slide.level_downsamples == (1.0,)


def test_magnification_above_the_scan_is_refused(tmp_path):
    with open_slide(_png(tmp_path / "ten.png"), mpp=1.0) as slide:
        with pytest.raises(SlideError, match=r"ten\.png.*20x is higher than the scan's 10x"):
            slide.read_at(0, 0, 100, 100, 20)
        assert slide.read_at(0, 0, 100, 100, 5).shape == (50, 50, 3)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.svs", None, "no such file"),
        ("text.svs", b"this is not a slide\n", "not a slide format"),
        ("empty.png", b"", r"the file is empty \(0 bytes\)"),
        ("empty.svs", b"", r"the file is empty \(0 bytes\)"),
        ("broken.png", b"\x89PNG\r\n", "cannot read the image"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SlideError, match=re.escape(name) + ".*" + message):
        open_slide(path)


def test_truncated_tiff_fails_with_the_file_name(tmp_path, synth_slide_path):
    data = synth_slide_path.read_bytes()
    path = tmp_path / "truncated.svs"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideError, match=r"truncated\.svs"), open_slide(path) as slide:
        w, h = slide.dimensions
        slide.read(0, 0, w, h, w, h)


def test_mpp_sources_in_order(tmp_path):
    path = tmp_path / "s.svs"
    assert resolve_mpp(path, 0.3, 0.5, 20) == 0.3
    assert resolve_mpp(path, None, 0.5, 40) == 0.5
    assert resolve_mpp(path, None, None, 40) == 0.25  # objective power only as a fallback
    with pytest.raises(SlideError, match=r"s\.svs.*no mpp"):
        resolve_mpp(path, None, None, None)
    with pytest.raises(ConfigError, match="positive"):
        resolve_mpp(path, -1.0, None, None)


def test_mpp_csv(tmp_path):
    csv = tmp_path / "mpp.csv"
    csv.write_text("slide,mpp\n/data/a.svs,0.25\nb,0.5\n")
    table = load_mpp_csv(csv)
    assert table == {"a": 0.25, "b": 0.5}
    assert override_for("/elsewhere/a.svs", table) == 0.25
    assert override_for("c.svs", table) is None
    assert override_for("c.svs", 0.4) == 0.4
    csv.write_text("name,mpp\na,0.25\n")
    with pytest.raises(FileFormatError, match=r"mpp\.csv needs the column\(s\) slide,mpp"):
        load_mpp_csv(csv)
    csv.write_bytes(b"\xef\xbb\xbfslide;mpp\r\na;0,25\r\n")  # Excel, decimal-comma locale
    assert load_mpp_csv(csv) == {"a": 0.25}
    csv.write_text("slide,mpp\na,abc\n")
    with pytest.raises(ConfigError, match=r"mpp\.csv, line 2.*'abc'"):
        load_mpp_csv(csv)


@pytest.mark.parametrize("which", ["real", "synthetic"])
def test_direct_tile_reads_equal_openslide(which, real_slide_path, synth_slide_path):
    """The tiled-TIFF fast path gives OpenSlide's pixels, edges and outside included."""
    import openslide

    path = real_slide_path if which == "real" else synth_slide_path
    reference = openslide.OpenSlide(str(path))
    with open_slide(path) as slide:
        assert slide._backend._tiles is not None  # the fast path is in use
        for level, (w, h) in enumerate(slide.level_dimensions):
            d = round(slide.level_downsamples[level])
            for x, y, width, height in [
                (0, 0, 300, 200),
                (37 * d, 251 * d, 513, 260),  # unaligned, spans several tiles
                (-50 * d, 10 * d, 700, 300),  # hangs off the left edge
                ((w - 100) * d, (h - 30) * d, 256, 256),  # off the right and bottom edges
            ]:
                ours = slide._backend.read(level, x, y, width, height)
                theirs = reference.read_region((x, y), level, (width, height))
                white = Image.new("RGBA", theirs.size, (255, 255, 255, 255))
                theirs = np.asarray(Image.alpha_composite(white, theirs).convert("RGB"))
                np.testing.assert_array_equal(ours, theirs, err_msg=f"level {level} at {x},{y}")
    reference.close()


_forked_slide = None


def _read_in_child(x: int) -> bytes:
    return _forked_slide.read_region(x, 0, 512, 128).tobytes()


def test_a_slide_opened_before_fork_reads_correctly_in_children(synth_slide_path):
    """DataLoader workers fork with the slide already open: each must read on its own."""
    import multiprocessing

    global _forked_slide
    with open_slide(synth_slide_path) as slide:
        xs = [0, 512, 1024, 1536] * 8
        want = [slide.read_region(x, 0, 512, 128).tobytes() for x in xs]
        _forked_slide = slide
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.map(_read_in_child, xs, chunksize=1)
        _forked_slide = None
    assert got == want


def test_huge_reductions_read_in_strips_equal_one_read(tmp_path, monkeypatch):
    import lrmil.wsi.slide as slide_module

    with open_slide(_png(tmp_path / "big.png", 400, 300), mpp=0.5) as slide:
        whole = slide.read(0, 0, 400, 300, 100, 75)
        reads: list[int] = []
        backend_read = slide._backend.read
        monkeypatch.setattr(
            slide._backend, "read", lambda *a: reads.append(a[4]) or backend_read(*a)
        )
        monkeypatch.setattr(slide_module, "MAX_READ_PIXELS", 400 * 50)
        np.testing.assert_array_equal(slide.read(0, 0, 400, 300, 100, 75), whole)
        assert len(reads) > 1 and max(reads) <= 50  # bounded strips
    # A non-integer factor: strips resample slightly differently, so close on a smooth image.
    y, x = np.mgrid[0:300, 0:400]
    smooth = np.stack([x * 255 // 400, y * 255 // 300, (x + y) * 255 // 700], axis=2)
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "smooth.png")
    with open_slide(tmp_path / "smooth.png", mpp=0.5) as slide:
        strips = slide.read(0, 0, 400, 300, 130, 97)
        monkeypatch.setattr(slide_module, "MAX_READ_PIXELS", 1 << 26)
        np.testing.assert_allclose(strips, slide.read(0, 0, 400, 300, 130, 97), atol=2)


@pytest.mark.parametrize("keep", [0.0005, 0.02, 0.3, 0.7, 0.95, 0.9999])
def test_a_truncated_slide_is_called_truncated(tmp_path, synth_slide_path, keep):
    data = synth_slide_path.read_bytes()
    path = tmp_path / f"cut{keep}.svs"
    path.write_bytes(data[: int(len(data) * keep)])
    message = rf"cut{keep}.svs: looks truncated \({int(len(data) * keep):,} bytes, expected"
    with pytest.raises(SlideError, match=message), open_slide(path) as slide:
        for (w, h), d in zip(slide.level_dimensions, slide.level_downsamples, strict=True):
            slide.read(0, 0, round(w * d), round(h * d), w, h)


def test_a_complete_slide_is_not_called_truncated(synth_slide_path, tmp_path):
    from lrmil.wsi.truncation import truncation

    assert truncation(synth_slide_path) is None
    other = tmp_path / "other.svs"
    other.write_bytes(b"not a TIFF at all" * 10)
    assert truncation(other) is None
    with pytest.raises(SlideError, match="not a slide format OpenSlide can read"):
        open_slide(other, mpp=0.5)
