"""One tiny model exported once per session; tests that alter artifacts work on copies."""

import shutil

import pytest

from lrmil.export import export_model
from lrmil.infer.testing import tiny_model


@pytest.fixture(scope="session")
def tiny():
    return tiny_model(dim=16, n_classes=3, patch_size=32)


@pytest.fixture(scope="session")
def exported(tiny, tmp_path_factory):
    encoder, head, meta = tiny
    out = tmp_path_factory.mktemp("export")
    export_model(encoder, head, meta, out)
    return out


@pytest.fixture
def exported_copy(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "export")
