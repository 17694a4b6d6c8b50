import h5py
import numpy as np
import pytest

from lrmil.data import Features, parents_from_coords, read_features, write_features
from lrmil.errors import FileFormatError
from lrmil.tiling.grid import child_coords

RNG = np.random.default_rng(0)


def _lr_grid(origin=(37, 11), size0=256, shape=(3, 4)):
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64) * size0 + np.array(origin)


def test_round_trip_with_links_and_layers(tmp_path):
    feats = Features(
        RNG.normal(size=(5, 8)).astype(np.float32),
        RNG.integers(0, 999, (5, 2)),
        parent=np.array([0, 0, 1, 2, 2]),
        child=np.array([0, 5, 15, 1, 2]),
        layers={"stage3": RNG.normal(size=(5, 3)).astype(np.float32)},
        attrs={"encoder": "x", "patch_size": 64},
    )
    write_features(tmp_path / "a.h5", feats, dtype="float16")
    back = read_features(tmp_path / "a.h5", dim=8)
    assert back.features.dtype == np.float32
    np.testing.assert_allclose(back.features, feats.features, atol=1e-2)
    np.testing.assert_array_equal(back.coords, feats.coords)
    np.testing.assert_array_equal(back.parent, feats.parent)
    np.testing.assert_array_equal(back.child, feats.child)
    np.testing.assert_allclose(back.layers["stage3"], feats.layers["stage3"], atol=1e-2)
    assert back.attrs["encoder"] == "x" and back.attrs["dim"] == 8
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_parents_from_coords_inverts_child_coords():
    lr = _lr_grid()
    hr = child_coords(lr, 4, 64)  # (N, 16, 2), k = v * r + u
    rows, ks = np.nonzero(RNG.random((len(lr), 16)) < 0.6)
    order = RNG.permutation(len(rows))
    parent, child = parents_from_coords(hr[rows, ks][order], lr, 256, 4)
    np.testing.assert_array_equal(parent, rows[order])
    np.testing.assert_array_equal(child, ks[order])


def _trident_file(path, coords, features):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        ds = f.create_dataset("coords", data=coords)
        ds.attrs.update(
            {"patch_size": 256, "patch_size_level0": 64, "target_magnification": 20.0, "name": "s"}
        )
        f.attrs["encoder"] = "uni_v1"


def test_trident_file_is_read_and_linked(tmp_path):
    lr = _lr_grid()
    hr = child_coords(lr, 4, 64).reshape(-1, 2)
    outside = np.array([[37 + 4 * 256 + 64, 11]])  # right of the LR grid: no parent
    coords = np.concatenate([hr[::3], outside])
    features = RNG.normal(size=(len(coords), 6)).astype(np.float32)
    _trident_file(tmp_path / "t.h5", coords, features)
    plain = read_features(tmp_path / "t.h5")
    assert (
        plain.parent is None
        and plain.attrs["patch_size"] == 256
        and plain.attrs["encoder"] == "uni_v1"
    )
    linked = read_features(tmp_path / "t.h5", lr_coords=lr, lr_patch_size_level0=256, r=4)
    assert len(linked) == len(coords) - 1 and linked.attrs["unlinked"] == 1
    index = np.arange(0, len(hr), 3)
    np.testing.assert_array_equal(linked.parent, index // 16)
    np.testing.assert_array_equal(linked.child, index % 16)
    np.testing.assert_array_equal(linked.features, features[:-1])


def test_misaligned_hr_coords_refused(tmp_path):
    lr = _lr_grid()
    _trident_file(tmp_path / "t.h5", lr + 5, np.zeros((len(lr), 2), np.float32))
    with pytest.raises(FileFormatError, match="not on the r = 4 child grid"):
        read_features(tmp_path / "t.h5", lr_coords=lr, lr_patch_size_level0=256, r=4)


def test_corrupt_and_incomplete_files(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF garbage" * 10)
    with pytest.raises(FileFormatError, match="bad.h5 is not a readable HDF5"):
        read_features(bad)
    good = tmp_path / "good.h5"
    write_features(good, Features(np.zeros((4, 3), np.float32), np.zeros((4, 2), np.int64)))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(FileFormatError, match="truncated.h5"):
        read_features(truncated)
    with h5py.File(tmp_path / "nocoords.h5", "w") as f:
        f["features"] = np.zeros((2, 3))
    with pytest.raises(FileFormatError, match="lacks a 'features' or 'coords'"):
        read_features(tmp_path / "nocoords.h5")
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f["features"], f["coords"] = np.zeros((2, 3)), np.zeros((3, 2))
    with pytest.raises(FileFormatError, match=r"features \(2, 3\) and coords \(3, 2\)"):
        read_features(tmp_path / "rows.h5")
    with pytest.raises(FileFormatError, match="does not exist"):
        read_features(tmp_path / "missing.h5")


def test_dim_disagreeing_with_encoder(tmp_path):
    path = tmp_path / "f.h5"
    write_features(
        path,
        Features(np.zeros((2, 256), np.float32), np.zeros((2, 2)), attrs={"encoder": "lrmil-cnn"}),
    )
    with pytest.raises(
        FileFormatError, match="has dim 256 but the encoder gives 192 \\(file encoder: lrmil-cnn\\)"
    ):
        read_features(path, dim=192)


def test_layers_stored_in_their_own_dtype(tmp_path):
    feats = Features(
        RNG.normal(size=(4, 3)).astype(np.float32),
        np.zeros((4, 2), np.int64),
        layers={"stage3": RNG.normal(size=(4, 2)).astype(np.float32)},
    )
    write_features(tmp_path / "a.h5", feats, layers_dtype="float16")
    with h5py.File(tmp_path / "a.h5") as fh:
        assert fh["features"].dtype == np.float32 and fh["layers/stage3"].dtype == np.float16
    np.testing.assert_array_equal(read_features(tmp_path / "a.h5").features, feats.features)
    with pytest.raises(ValueError, match="float32 or float16"):
        write_features(tmp_path / "b.h5", feats, layers_dtype="int8")
