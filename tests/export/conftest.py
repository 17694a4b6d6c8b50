import shutil

import pytest


@pytest.fixture
def tiny(tiny_lr_model):
    return tiny_lr_model


@pytest.fixture
def exported(tiny_lr_export):
    return tiny_lr_export


@pytest.fixture
def exported_copy(tiny_lr_export, tmp_path):
    """A private copy to alter."""
    return shutil.copytree(tiny_lr_export, tmp_path / "export")
