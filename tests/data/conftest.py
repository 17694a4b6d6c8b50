import pytest

from lrmil.synth.slide import write_slide
from lrmil.tiling import TilingConfig, tile_slides


@pytest.fixture(scope="session")
def tiled(tmp_path_factory):
    """Two small synthetic slides (20x level 0) tiled with 64 px patches: TILED dir."""
    root = tmp_path_factory.mktemp("cohort")
    for i, label in enumerate(("negative", "positive")):
        write_slide(root / f"slide{i}.svs", 1024, 768, seed=i, label=label)
    summary = tile_slides(
        [root / "slide0.svs", root / "slide1.svs"], root / "tiled", TilingConfig(patch_size=64)
    )
    assert summary.failed == 0
    return root / "tiled"
