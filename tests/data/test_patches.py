import pickle

import numpy as np
import pytest
import torch

from lrmil.data import PatchDataset
from lrmil.embed import encode_dataset
from lrmil.encoders import build
from lrmil.tiling import read_coords
from lrmil.wsi import open_slide


@pytest.fixture(scope="module")
def hr_dataset(tiled):
    ts = read_coords(tiled / "coords" / "slide1.h5")
    coords = ts.hr_coords[ts.hr_valid]
    dataset = PatchDataset(
        ts.slide_path, coords, ts.hr_patch_size_level0, ts.patch_size, mpp=ts.level0_mpp
    )
    yield dataset
    dataset.close()


@pytest.fixture(scope="module")
def cnn():
    return build("lrmil-cnn")


@pytest.fixture
def subset_of(hr_dataset):
    """make(n): a dataset of hr_dataset's first n patches, closed after the test."""
    made = []

    def make(n):
        made.append(PatchDataset(hr_dataset.slide_path, hr_dataset.coords[:n], hr_dataset.size0,
                                 64, hr_dataset.mpp))
        return made[-1]

    yield make
    for dataset in made:
        dataset.close()


def test_items_are_the_slide_pixels(hr_dataset):
    patch, index = hr_dataset[3]
    assert index == 3 and patch.dtype == torch.uint8 and patch.shape == (64, 64, 3)
    x, y = hr_dataset.coords[3]
    with open_slide(hr_dataset.slide_path) as slide:
        expected = slide.read_region(int(x), int(y), hr_dataset.size0, 64)
    np.testing.assert_array_equal(patch.numpy(), expected)


def test_dataset_pickles_without_its_slide_handle(hr_dataset):
    hr_dataset[0]
    assert hr_dataset._slide is not None
    copy = pickle.loads(pickle.dumps(hr_dataset))
    assert copy._slide is None and torch.equal(copy[1][0], hr_dataset[1][0])
    copy.close()


def test_embeddings_through_dataset_equal_direct_encoding(subset_of, cnn):
    subset = subset_of(16)
    feats, _ = encode_dataset(subset, cnn, batch_size=16)
    with open_slide(subset.slide_path) as slide:
        pixels = np.stack(
            [slide.read_region(int(x), int(y), subset.size0, 64) for x, y in subset.coords]
        )
    direct = cnn.encode(torch.from_numpy(pixels)).numpy()
    assert np.array_equal(feats, direct)


def test_workers_and_batch_size_do_not_change_results(subset_of, cnn):
    subset = subset_of(24)
    base, pooled = encode_dataset(subset, cnn, batch_size=8, layers=["stage3"])
    two_workers, pooled2 = encode_dataset(subset, cnn, batch_size=8, workers=2, layers=["stage3"])
    assert np.array_equal(base, two_workers) and np.array_equal(pooled["stage3"], pooled2["stage3"])
    other_batch, _ = encode_dataset(subset, cnn, batch_size=5)
    np.testing.assert_allclose(other_batch, base, rtol=1e-5, atol=1e-5)


def test_layer_embeddings_match_forward_features(hr_dataset, subset_of, cnn):
    patches = torch.stack([hr_dataset[i][0] for i in range(4)])
    subset = subset_of(4)
    _, pooled = encode_dataset(subset, cnn, batch_size=4, layers=["stage2"])
    with torch.no_grad():
        _, _, expected = cnn.forward_features(cnn.preprocess(patches), ["stage2"])
    assert np.array_equal(pooled["stage2"], expected["stage2"].numpy())
