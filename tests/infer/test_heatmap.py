import numpy as np

from lrmil.infer.heatmap import BAR_WIDTH, OUTLINE, render_heatmap


def test_heat_follows_attention_and_top_patches_are_outlined():
    thumb = np.full((40, 60, 3), 255, np.uint8)
    coords = np.array([[0, 0], [200, 0], [400, 200]])  # level 0; scale 0.1 -> 20 px boxes
    attention = np.array([0.1, 0.2, 0.7])
    image = np.asarray(render_heatmap(thumb, coords, 200, 0.1, attention, top_k=1))
    assert image.shape == (40, 60 + BAR_WIDTH, 3)
    low, high = image[10, 10].astype(int), image[30, 50].astype(int)
    assert low.sum() < high.sum()  # inferno: low attention is dark, high is bright
    assert tuple(image[20, 45]) == OUTLINE  # the top patch's outline
    assert tuple(image[0, 25]) != OUTLINE  # the others are not outlined
    assert (image[35, 10] == 255).all()  # outside any patch the thumbnail shows through


def test_uniform_attention_and_tiny_thumbnails_do_not_fail():
    image = render_heatmap(np.zeros((3, 2, 3), np.uint8), np.array([[0, 0]]), 1000, 0.001,
                           np.array([1.0]))
    assert image.size == (2 + BAR_WIDTH, 3)
