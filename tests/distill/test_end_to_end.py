"""synth -> tile -> embed -> distill in encoder mode, on real (tiny) synthetic slides."""

import csv

import numpy as np
import pytest
import torch

from lrmil.data import read_features
from lrmil.data.store import FeatureStore
from lrmil.distill import load_config, load_student, run
from lrmil.distill.layout import RunLayout
from lrmil.distill.stage1 import stage1_features


@pytest.mark.slow
def test_encoder_mode_end_to_end(tmp_path):
    from lrmil.embed import embed_slides
    from lrmil.synth import make_cohort
    from lrmil.tiling import read_coords, tile_slides
    from lrmil.wsi import open_slide

    make_cohort(tmp_path, n_slides=10, seed=0, width=3072, height=3072)
    tile_slides([str(tmp_path / "slides")], tmp_path / "tiled")
    feats = tmp_path / "features"
    embed_slides(tmp_path / "tiled", "lrmil-cnn", feats, mag="both", layers=["default"])
    with (tmp_path / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh)
                if len(read_features(feats / "lr" / f"{r['slide']}.h5"))]
    labels = tmp_path / "labels_used.csv"
    labels.write_text("slide,label\n" + "".join(f"{r['slide']},{r['label']}\n" for r in rows))

    cfg = load_config(
        overrides=["folds=2", "val_fraction=0.3", "teacher.epochs=3", "student.epochs=3",
                   "baseline.epochs=3", "teacher.min_epochs=1", "student.min_epochs=1",
                   "baseline.min_epochs=1", "stage1.epochs=1", "stage1.read_workers=0",
                   "stage1.batch_patches=16"],
        features=str(feats), labels=str(labels), out=str(tmp_path / "run"))
    report = run(cfg)
    assert report["models"] == ["teacher", "baseline", "student"]
    run_dir = tmp_path / "run"
    assert (run_dir / "fold_1" / "stage1_encoder.safetensors").is_file()
    assert (run_dir / "report.md").is_file()

    # The encoder load_student gives reproduces the stage-1 features the student trained on.
    encoder, mil, config = load_student(run_dir, fold=1)
    assert config["stage1"]["mode"] == "encoder" and "tiling" in config
    name = rows[0]["slide"]
    coords = read_coords(tmp_path / "tiled" / "coords" / f"{name}.h5")
    with open_slide(coords.slide_path) as slide:
        x, y = coords.coords[0]
        patch = slide.read_region(int(x), int(y), coords.lr_patch_size_level0, coords.patch_size)
    with torch.no_grad():
        emb = encoder.encode(torch.from_numpy(np.ascontiguousarray(patch))[None])[0]
    stage1 = torch.from_numpy(FeatureStore().read(stage1_features(RunLayout(run_dir).fold(1),
                                                                  name))[0])
    torch.testing.assert_close(emb, stage1, rtol=1e-4, atol=1e-4)
    base = read_features(feats / "lr" / f"{name}.h5").features[0]
    assert not np.allclose(stage1.numpy(), base, atol=1e-4)  # stage 1 changed the encoder
