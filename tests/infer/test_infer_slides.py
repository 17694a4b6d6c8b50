import csv
import os

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from lrmil.errors import ConfigError
from lrmil.infer import infer_slides, predict_slide
from lrmil.infer.heatmap import BAR_WIDTH
from lrmil.infer.pipeline import tiling_for
from lrmil.tiling.tiler import tile_slide
from lrmil.wsi import open_slide


def _direct(path, model):
    """The torch model applied by hand to the slide's LR patches: the expected answer."""
    encoder, head, meta = model
    tiling = tiling_for(meta.extra, meta.patch_size, meta.magnification)
    with open_slide(path) as slide:
        tiles = tile_slide(slide, tiling)
        patches = np.stack([slide.read_region(int(x), int(y), tiles.geometry.lr_size0, 32)
                            for x, y in tiles.coords])
    with torch.inference_mode():
        probs, attn = head(encoder(torch.from_numpy(patches)))
    return tiles.coords, probs.numpy(), attn.numpy()


@pytest.fixture(scope="module")
def run_out(slides, onnx_engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("infer")
    summary = infer_slides(slides, onnx_engine, out, workers=0, batch_size=16, progress=True)
    return out, summary


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_equal_the_torch_model_on_the_same_slides(run_out, slides, tiny_lr_model):
    out, summary = run_out
    assert (summary.ok, summary.failed, summary.skipped) == (2, 0, 0)
    rows = {r["slide"]: r for r in _rows(out / "predictions.csv")}
    assert set(rows) == {"positive", "negative"}
    classes = tiny_lr_model[2].class_names
    for path in slides:
        coords, probs, attn = _direct(path, tiny_lr_model)
        row = rows[path.stem]
        got = np.array([float(row[f"prob_{c}"]) for c in classes])
        np.testing.assert_allclose(got, probs, atol=1e-5)
        assert row["predicted"] == classes[int(np.argmax(probs))]
        assert int(row["n_patches"]) == len(coords) and float(row["seconds"]) > 0
        with h5py.File(out / "attention" / f"{path.stem}.h5") as f:
            np.testing.assert_array_equal(f["coords"][()], coords)
            np.testing.assert_allclose(f["attention"][()], attn, atol=1e-6)
            assert f.attrs["engine"] == "onnx"


def test_torch_and_onnx_pipelines_agree_on_real_slides(slides, torch_engine, onnx_engine):
    tiling = tiling_for({}, 32, 5.0)
    a = predict_slide(slides[0], torch_engine, tiling, workers=0)
    b = predict_slide(slides[0], onnx_engine, tiling, workers=0)
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-5
    assert np.abs(a.attention - b.attention).max() < 1e-6
    assert set(a.timings) >= {"tissue", "read", "encode", "aggregate", "total"}


def test_reading_in_worker_processes_gives_the_same_result(slides, torch_engine):
    tiling = tiling_for({}, 32, 5.0)
    a = predict_slide(slides[1], torch_engine, tiling, workers=0, batch_size=8)
    b = predict_slide(slides[1], torch_engine, tiling, workers=2, batch_size=8)
    np.testing.assert_allclose(a.attention, b.attention, atol=1e-7)


def test_heatmap_png_is_the_thumbnail_plus_the_colour_bar(run_out, slides, torch_engine):
    out, _ = run_out
    pred = predict_slide(slides[0], torch_engine, tiling_for({}, 32, 5.0), workers=0)
    h, w = pred.thumbnail.shape[:2]
    with open_slide(slides[0]) as slide:
        assert w / slide.dimensions[0] == pytest.approx(pred.thumbnail_scale, rel=1e-6)
        assert max(w, h) >= min(512, max(slide.dimensions)) // 2
    with Image.open(out / "heatmaps" / "positive.png") as image:
        assert image.format == "PNG" and image.size == (w + BAR_WIDTH, h)


def test_heatmap_side_is_bounded(slides, torch_engine):
    pred = predict_slide(slides[0], torch_engine, tiling_for({}, 32, 5.0), workers=0,
                         thumbnail_side=100)
    assert max(pred.thumbnail.shape[:2]) <= 100


def test_timings_and_summary_are_written(run_out):
    out, summary = run_out
    rows = _rows(out / "timings.csv")
    assert {r["slide"] for r in rows} == {"positive", "negative"}
    assert all(float(r["encode_s"]) > 0 and float(r["patches_per_s"]) > 0 for r in rows)
    assert (out / "summary.json").is_file()
    assert (out / "errors.csv").read_text() == "slide,path,error,run\n"  # none failed
    assert summary.mean_timings["total"] > 0 and summary.patches > 0


def test_rerun_skips_complete_slides_and_redoes_changed_ones(slides, onnx_engine, tmp_path):
    import shutil

    copies = [shutil.copy(p, tmp_path / p.name) for p in slides]
    out = tmp_path / "out"
    infer_slides(copies, onnx_engine, out, workers=0)
    again = infer_slides(copies, onnx_engine, out, workers=0)
    assert (again.ok, again.skipped) == (0, 2)
    assert len(_rows(out / "predictions.csv")) == 2  # skipped slides are still listed
    stat = os.stat(copies[0])
    os.utime(copies[0], (stat.st_atime, stat.st_mtime + 10))  # the slide file changed
    third = infer_slides(copies, onnx_engine, out, workers=0)
    assert (third.ok, third.skipped) == (1, 1)
    forced = infer_slides(copies, onnx_engine, out, workers=0, overwrite=True)
    assert forced.ok == 2


def test_a_bad_slide_is_reported_and_the_others_go_on(slides, onnx_engine, tmp_path):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    missing = tmp_path / "missing.svs"
    summary = infer_slides([broken, slides[1], missing], onnx_engine, tmp_path / "out",
                           workers=0)
    assert (summary.ok, summary.failed) == (1, 2)
    errors = {r["slide"]: r["error"] for r in _rows(tmp_path / "out" / "errors.csv")}
    assert set(errors) == {"broken", "missing"}
    assert "broken.svs" in errors["broken"] and "not found" in errors["missing"]
    assert [r["slide"] for r in _rows(tmp_path / "out" / "predictions.csv")] == ["negative"]
    assert not list((tmp_path / "out").rglob("*.tmp-*"))  # no half-written files left


def test_bad_arguments_are_refused(slides, onnx_engine, tmp_path):
    twin = tmp_path / "positive.svs"
    twin.write_bytes(b"")
    with pytest.raises(ConfigError, match="two slides share the name 'positive'"):
        infer_slides([slides[0], twin], onnx_engine, tmp_path / "out")
    with pytest.raises(ConfigError, match="--batch-size"):
        infer_slides(slides, onnx_engine, tmp_path / "out", batch_size=0)


def test_plain_images_need_an_mpp_and_folders_need_slides(slides, onnx_engine, tmp_path):
    with open_slide(slides[1]) as slide:
        w, h = slide.dimensions
        Image.fromarray(slide.read(0, 0, w, h, w, h)).save(tmp_path / "scan.png")
    summary = infer_slides([tmp_path / "scan.png"], onnx_engine, tmp_path / "a", workers=0)
    assert summary.failed == 1 and "mpp" in summary.errors[0].error
    summary = infer_slides([tmp_path / "scan.png"], onnx_engine, tmp_path / "b", workers=0,
                           mpp={"scan": 0.5})
    assert summary.ok == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no slide files"):
        infer_slides([tmp_path / "empty"], onnx_engine, tmp_path / "c")
