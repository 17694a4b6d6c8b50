"""MIL checkpoints: safetensors with lrmil metadata, readable without their tensors."""

import pytest

from lrmil.distill.checkpoint import load_meta, load_state, save_mil
from lrmil.errors import FileFormatError
from lrmil.mil import GatedABMIL


def test_the_metadata_reads_alone_as_with_the_tensors(tmp_path):
    model = GatedABMIL.from_hparams({"in_dim": 8, "n_classes": 2, "hidden": 4, "proj_dim": 4,
                                     "instance_head": False})
    path = tmp_path / "teacher.safetensors"
    save_mil(model, path, {"best_epoch": 7, "val_auc": 0.75})
    state, meta = load_state(path)
    assert state and load_meta(path) == meta
    assert meta["best_epoch"] == 7 and meta["val_auc"] == 0.75 and meta["hparams"]["in_dim"] == 8


def test_a_missing_or_broken_checkpoint_is_named(tmp_path):
    with pytest.raises(FileFormatError, match="missing.safetensors does not exist"):
        load_meta(tmp_path / "missing.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(FileFormatError, match="broken.safetensors cannot be read"):
        load_meta(tmp_path / "broken.safetensors")
