import numpy as np
import pytest
import torch
from torch import nn

from lrmil.encoders import build

ort = pytest.importorskip("onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lrmil-cnn", "lrmil-vit-tiny"])
def test_builtin_exports_to_onnx_with_preprocess_folded(tmp_path, name):
    enc = build(name)
    model = nn.Sequential(enc.preprocess, enc.model).eval()
    example = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    path = tmp_path / f"{name}.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},))
    session = ort.InferenceSession(str(path))
    x = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), atol=1e-4)
