"""OUT/qupath/<slide>.geojson follows every rule of QuPath's GeoJSON reader that lrmil relies
on (qupath.lib.io.PathObjectTypeAdapters), and loads in a GeoJSON reader (shapely)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from lrmil.infer.qupath import outline, slide_geojson, write_geojson


def check_qupath_rules(collection):
    """The rules of QuPath's reader this file depends on (see lrmil/infer/qupath.py)."""
    assert collection["type"] == "FeatureCollection" and isinstance(collection["features"], list)
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and "id" not in feature  # QuPath wants UUIDs there
        geometry, props = feature["geometry"], feature["properties"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        polygons = ([geometry["coordinates"]] if geometry["type"] == "Polygon"
                    else geometry["coordinates"])
        for rings in polygons:
            for ring in rings:
                assert len(ring) >= 4 and ring[0] == ring[-1]  # closed linear rings
        assert props["objectType"] in ("tile", "annotation")
        assert isinstance(props["measurements"], dict) and props["measurements"]
        for name, value in props["measurements"].items():
            assert isinstance(name, str) and isinstance(value, int | float)
            assert math.isfinite(value)
        if "classification" in props:
            cls = props["classification"]
            assert isinstance(cls["name"], str)
            assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255
                                                  for c in cls["color"])


def prediction(origin=(0, 0)):
    mask = np.zeros((20, 30), bool)
    mask[2:18, 2:20] = True
    mask[8:12, 8:12] = False  # a hole
    mask[2:6, 24:28] = True  # a second region
    return SimpleNamespace(
        probabilities=np.array([0.2, 0.8]), attention=np.array([0.1, 0.6, 0.3]),
        coords=np.array([[0, 0], [64, 0], [64, 64]]), patch_size0=64, mask=mask,
        mask_scale=(0.1, 0.1), origin=origin)


def test_tiles_and_annotation_follow_the_reader_rules(tmp_path):
    collection = slide_geojson(prediction(), ["benign", "tumour"], called=1, threshold=0.4)
    check_qupath_rules(collection)
    path = tmp_path / "slide.geojson"
    write_geojson(path, collection)
    loaded = json.loads(path.read_text())
    check_qupath_rules(loaded)
    annotation, *tiles = loaded["features"]
    assert annotation["properties"]["objectType"] == "annotation"
    assert annotation["properties"]["classification"]["name"] == "tumour"
    assert annotation["properties"]["measurements"] == {"prob_benign": 0.2, "prob_tumour": 0.8,
                                                        "threshold": 0.4}
    assert [t["properties"]["objectType"] for t in tiles] == ["tile"] * 3
    measurements = [t["properties"]["measurements"] for t in tiles]
    assert [m["attention"] for m in measurements] == [0.1, 0.6, 0.3]
    assert [m["attention_rank"] for m in measurements] == [3, 1, 2]
    assert measurements[1]["attention_x_n"] == pytest.approx(1.8)
    assert tiles[2]["geometry"]["coordinates"] == [[[64, 64], [128, 64], [128, 128], [64, 128],
                                                    [64, 64]]]


def test_bounds_origin_is_subtracted():
    shifted = slide_geojson(prediction(origin=(1000, 500)), ["a", "b"], 0, None)
    plain = slide_geojson(prediction(), ["a", "b"], 0, None)
    tile, base = shifted["features"][1], plain["features"][1]
    assert tile["geometry"]["coordinates"][0][0] == [-1000, -500]
    assert base["geometry"]["coordinates"][0][0] == [0, 0]
    a = np.array(shifted["features"][0]["geometry"]["coordinates"][0][0])
    b = np.array(plain["features"][0]["geometry"]["coordinates"][0][0])
    np.testing.assert_allclose(a, b - [1000, 500])
    assert "threshold" not in shifted["features"][0]["properties"]["measurements"]


def test_tissue_outline_has_regions_and_holes_in_level0_pixels():
    shapely = pytest.importorskip("shapely.geometry")
    polygons = outline(prediction().mask, (0.1, 0.1), (0, 0))
    shape = shapely.shape({"type": "MultiPolygon", "coordinates": polygons})
    assert shape.is_valid and len(shape.geoms) == 2
    big = max(shape.geoms, key=lambda g: g.area)
    assert len(big.interiors) == 1
    # mask pixels are 10 level-0 pixels; the region spans mask columns 2..19, rows 2..17
    x0, y0, x1, y1 = big.bounds
    assert x0 == pytest.approx(20, abs=5) and x1 == pytest.approx(200, abs=5)
    assert y0 == pytest.approx(20, abs=5) and y1 == pytest.approx(180, abs=5)


def test_shapely_loads_every_feature(tmp_path):
    shapely = pytest.importorskip("shapely.geometry")
    path = tmp_path / "s.geojson"
    write_geojson(path, slide_geojson(prediction(), ["a", "b"], 1, 0.5))
    for feature in json.loads(path.read_text())["features"]:
        geometry = shapely.shape(feature["geometry"])
        assert geometry.is_valid and geometry.area > 0


def test_a_non_finite_measurement_is_refused_and_nothing_written(tmp_path):
    pred = prediction()
    pred.attention = np.array([np.nan, 0.5, 0.5])
    path = tmp_path / "bad.geojson"
    with pytest.raises(ValueError, match="QuPath needs numbers"):
        write_geojson(path, slide_geojson(pred, ["a", "b"], 0, None))
    assert not path.exists()
