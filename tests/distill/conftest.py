"""A tiny features cohort written once per session (lrmil.distill.toy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrmil.distill.toy import write_toy_features


@pytest.fixture(scope="session")
def toy_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 slides, 2 classes, a clear HR signal and a faint one at LR. The LR encoder attr is
    lrmil-cnn (dim 256) so that load_student can rebuild it; HR features are 16-d."""
    out = tmp_path_factory.mktemp("toy_features")
    write_toy_features(out, n_slides=24, n_lr=10, dim=256, hr_dim=16, hr_signal=4.0,
                       lr_signal=1.0, encoder="lrmil-cnn", seed=0)
    return out


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """These tensors are tiny: OpenMP threads only add spin-waiting (100x slower on a loaded
    2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
