"""OUT/qupath/<slide>.geojson: one slide's result as objects QuPath imports (File > Import
objects) and colours by measurement (Measure > Show measurement maps).

What QuPath's GeoJSON reader (qupath.lib.io.PathObjectTypeAdapters) relies on, and this writes:
- a FeatureCollection whose "features" are {"type": "Feature", "geometry", "properties"};
- geometry in pixels of the full-resolution image, origin at its top-left. QuPath opens
  OpenSlide formats cropped to `openslide.bounds-x/y` where they exist (MIRAX, some
  Hamamatsu), while lrmil reads in OpenSlide's uncropped level-0 frame, so the bounds origin is
  subtracted;
- properties.objectType "tile" (a tile object: one per LR patch, a square Polygon) or
  "annotation" (the slide's tissue outline, a MultiPolygon with holes);
- properties.measurements a JSON object of name -> finite number (QuPath reads a map of
  doubles: no NaN, no strings);
- properties.classification an object with "name" and "color" [r, g, b] (QuPath refuses an
  object without "color");
- no "id" (QuPath would need a UUID there; it makes its own).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lrmil.utils.atomic import atomic_write_text

# Class colours (tab10), by class index: QuPath shows the annotation in its class's colour.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def tile_features(coords: np.ndarray, size0: int, attention: np.ndarray,
                  origin: tuple[int, int]) -> list[dict[str, Any]]:
    """One "tile" per LR patch (level-0 corner `coords`, side `size0`) with its attention
    (the softmax weight), its rank (1 = most attended) and attention x N (1 = uniform)."""
    order = np.argsort(-attention, kind="stable")
    rank = np.empty(len(attention), np.int64)
    rank[order] = np.arange(1, len(attention) + 1)
    n = len(attention)
    features = []
    for (x, y), a, r in zip(coords.tolist(), attention.tolist(), rank.tolist(), strict=True):
        x0, y0 = x - origin[0], y - origin[1]
        ring = [[x0, y0], [x0 + size0, y0], [x0 + size0, y0 + size0], [x0, y0 + size0], [x0, y0]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "tile", "measurements": {
                             "attention": a, "attention_rank": r, "attention_x_n": a * n}}})
    return features


def outline(mask: np.ndarray, scale: tuple[float, float], origin: tuple[int, int]
            ) -> list[list[list[list[float]]]]:
    """The tissue mask's regions as MultiPolygon coordinates in level-0 pixels (each polygon:
    its outer ring, then its holes; rings closed). `scale`: mask pixels per level-0 pixel."""
    import contourpy

    padded = np.pad(mask.astype(np.float64), 1)  # regions touching the border close too
    generator = contourpy.contour_generator(z=padded, fill_type=contourpy.FillType.OuterOffset)
    points, offsets = generator.filled(0.5, 1.5)
    polygons = []
    for ring_points, ring_offsets in zip(points, offsets, strict=True):
        rings = []
        for a, b in zip(ring_offsets[:-1], ring_offsets[1:], strict=True):
            ring = ring_points[a:b]
            # padded pixel (i, j) is mask pixel (i - 1, j - 1), whose centre is at + 0.5
            x = (ring[:, 0] - 0.5) / scale[0] - origin[0]
            y = (ring[:, 1] - 0.5) / scale[1] - origin[1]
            coords = np.round(np.stack([x, y], axis=1), 1).tolist()
            if coords[0] != coords[-1]:
                coords.append(coords[0])
            if len(coords) >= 4:
                rings.append(coords)
        if rings:
            polygons.append(rings)
    return polygons


def slide_annotation(polygons: list, class_names: list[str], probabilities: np.ndarray,
                     called: int, threshold: float | None) -> dict[str, Any]:
    """The slide's call as an annotation of its tissue, classified, with the probabilities."""
    measurements = {f"prob_{name}": float(p)
                    for name, p in zip(class_names, probabilities, strict=True)}
    if threshold is not None:
        measurements["threshold"] = float(threshold)
    name = class_names[called]
    return {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": polygons},
            "properties": {"objectType": "annotation",
                           "name": f"lrmil: {name} ({probabilities[called]:.2f})",
                           "classification": {"name": name,
                                              "color": list(PALETTE[called % len(PALETTE)])},
                           "measurements": measurements}}


def slide_geojson(pred: Any, class_names: list[str], called: int,
                  threshold: float | None) -> dict[str, Any]:
    """The FeatureCollection of a `lrmil.infer.pipeline.SlidePrediction`."""
    polygons = outline(pred.mask, pred.mask_scale, pred.origin)
    features = [slide_annotation(polygons, class_names, pred.probabilities, called, threshold),
                *tile_features(pred.coords, pred.patch_size0, pred.attention, pred.origin)]
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: Path, collection: dict[str, Any]) -> None:
    """Written atomically; a non-finite number is refused (QuPath could not read it)."""
    for feature in collection["features"]:
        for value in feature["properties"].get("measurements", {}).values():
            if not math.isfinite(value):
                raise ValueError(f"{path}: a measurement is {value}; QuPath needs numbers")
    atomic_write_text(path, json.dumps(collection, allow_nan=False, separators=(",", ":")))
