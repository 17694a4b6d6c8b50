import dataclasses
import json

import onnx
import pytest
import torch

from lrmil import __version__
from lrmil.errors import ConfigError, EnvironmentMissingError, FileFormatError
from lrmil.export import ExportCheckError, export_model, export_onnx, weights_sha256
from lrmil.export.onnx_export import check_onnx
from lrmil.export.sidecar import check_pair, check_sidecar, read_sidecar, sidecar_path
from lrmil.infer.testing import tiny_model

VERSIONS = {"lrmil": __version__}


def test_graphs_have_dynamic_leading_axis_and_named_io(exported):
    encoder = onnx.load(exported / "encoder.onnx").graph
    head = onnx.load(exported / "mil.onnx").graph
    assert [i.name for i in encoder.input] == ["patches"]
    assert [o.name for o in encoder.output] == ["embeddings"]
    assert [o.name for o in head.output] == ["probabilities", "attention"]
    assert encoder.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    batch = encoder.input[0].type.tensor_type.shape.dim[0]
    bag = head.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # symbolic, not fixed
    assert bag.dim_param and not bag.dim_value


def test_sidecar_records_io_model_versions_and_hashes(tiny, exported):
    encoder, head, meta = tiny
    side = read_sidecar(exported / "mil.onnx")
    assert side.kind == "mil" and side.format == "onnx" and side.exporter == "dynamo"
    assert side.inputs[0].name == "features" and side.inputs[0].shape == ["n", 16]
    assert side.inputs[0].min == [1, 16]
    assert [o.name for o in side.outputs] == ["probabilities", "attention"]
    assert side.model.class_names == meta.class_names and side.model.feature_dim == 16
    assert side.weights_sha256 == weights_sha256(head)
    assert side.versions["lrmil"] == __version__ and "onnxruntime" in side.versions
    assert max(side.max_abs_diff.values()) < 1e-4
    enc = read_sidecar(exported / "encoder.onnx")
    assert enc.inputs[0].dtype == "uint8" and enc.inputs[0].shape == ["batch", 32, 32, 3]
    assert enc.weights_sha256 == weights_sha256(encoder)
    check_pair(enc, side)


def test_weights_hash_follows_the_weights(tiny):
    _, head, _ = tiny
    before = weights_sha256(head)
    other = tiny_model(dim=16, n_classes=3, patch_size=32, seed=1)[1]
    assert weights_sha256(other) != before
    assert weights_sha256(head) == before


def test_check_refuses_an_artifact_changed_after_export(exported_copy):
    with open(exported_copy / "mil.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(FileFormatError, match="does not match its sidecar"):
        check_sidecar(exported_copy / "mil.onnx", "mil", "onnx", VERSIONS)


def test_check_refuses_another_lrmil_version(exported_copy):
    path = sidecar_path(exported_copy / "encoder.onnx")
    data = json.loads(path.read_text())
    data["versions"]["lrmil"] = "0.0.1"
    path.write_text(json.dumps(data))
    with pytest.raises(FileFormatError, match="exported with lrmil 0.0.1"):
        check_sidecar(exported_copy / "encoder.onnx", "encoder", "onnx", VERSIONS)


def test_check_refuses_a_gpu_or_tensorrt_mismatch(exported_copy):
    # a plan made elsewhere: the versions it records differ from this machine's
    want = {**VERSIONS, "tensorrt": "10.3.0", "gpu": "NVIDIA H100"}
    with pytest.raises(FileFormatError, match="tensorrt None, this machine has 10.3.0"):
        check_sidecar(exported_copy / "mil.onnx", "mil", "onnx", want)


def test_check_refuses_wrong_kind_missing_sidecar_and_stale_run(exported_copy):
    with pytest.raises(FileFormatError, match="expected encoder/onnx"):
        check_sidecar(exported_copy / "mil.onnx", "encoder", "onnx", VERSIONS)
    with pytest.raises(FileFormatError, match="weights changed since this export"):
        check_sidecar(exported_copy / "mil.onnx", "mil", "onnx", VERSIONS, "another-run")
    sidecar_path(exported_copy / "mil.onnx").unlink()
    with pytest.raises(FileFormatError, match="sidecar mil.onnx.json is missing"):
        read_sidecar(exported_copy / "mil.onnx")
    with pytest.raises(FileFormatError, match="not found"):
        read_sidecar(exported_copy / "nothing.onnx")


def test_check_refuses_a_malformed_sidecar(exported_copy):
    sidecar_path(exported_copy / "mil.onnx").write_text("{not json")
    with pytest.raises(FileFormatError, match="not a valid lrmil sidecar"):
        read_sidecar(exported_copy / "mil.onnx")


def test_pair_from_different_models_is_refused(exported):
    encoder, mil = read_sidecar(exported / "encoder.onnx"), read_sidecar(exported / "mil.onnx")
    other = dataclasses.replace(mil, model=dataclasses.replace(mil.model, feature_dim=8))
    with pytest.raises(FileFormatError, match="different models"):
        check_pair(encoder, other)


def test_a_graph_that_disagrees_with_torch_is_refused(exported):
    other = tiny_model(dim=16, n_classes=3, patch_size=32, seed=7)[1]
    with pytest.raises(ExportCheckError, match="differs from torch"):
        check_onnx(exported / "mil.onnx", other, [torch.randn(9, 16)], "features",
                   ["probabilities", "attention"], 1e-4, 1e-3)


def test_falls_back_to_torchscript_and_says_why(tiny, tmp_path, monkeypatch):
    encoder, _, _ = tiny
    original = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("cannot capture this model")
        return original(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    patches = [torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8) for n in (2, 1, 5)]
    result = export_onnx(encoder, patches[0], tmp_path / "encoder.onnx", "patches",
                         ["embeddings"], "batch", patches[1:])
    assert result.exporter == "torchscript"
    assert "cannot capture this model" in result.note


def test_bad_options_are_refused_before_exporting(tiny, tmp_path):
    encoder, head, meta = tiny
    with pytest.raises(ConfigError, match="--fp16 applies to --format trt"):
        export_model(encoder, head, meta, tmp_path, fmt="onnx", fp16=True)
    with pytest.raises(ConfigError, match="--format must be onnx or trt"):
        export_model(encoder, head, meta, tmp_path, fmt="tflite")
    assert not any(tmp_path.iterdir())


def test_trt_export_without_tensorrt_says_what_is_missing(tiny, tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present")
    except ImportError:
        pass
    encoder, head, meta = tiny
    with pytest.raises(EnvironmentMissingError, match="use --engine onnx"):
        export_model(encoder, head, meta, tmp_path, fmt="trt")
    assert not any(tmp_path.iterdir())


def test_the_real_gated_abmil_exports_and_matches_torch(tmp_path):
    """lrmil.mil.GatedABMIL through the ops' export path (a regression: repeat_interleave in
    the reference used to export to a graph with wrong bag indices)."""
    from lrmil.export.graphs import HeadGraph
    from lrmil.mil import GatedABMIL

    torch.manual_seed(0)
    head = HeadGraph(GatedABMIL(16, 3, hidden=8, proj_dim=12).eval())
    result = export_onnx(head, torch.randn(5, 16), tmp_path / "mil.onnx", "features",
                         ["probabilities", "attention"], "n",
                         [torch.randn(n, 16) for n in (1, 17, 300)])
    assert result.exporter == "dynamo" and max(result.max_abs_diff.values()) < 1e-5


def test_float_pixel_input_is_supported(tiny, tmp_path):
    from lrmil.infer.engines.onnx_engine import OnnxEngine
    from lrmil.infer.engines.torch_engine import TorchEngine

    export_model(*tiny, tmp_path, input_dtype="float32")
    assert read_sidecar(tmp_path / "encoder.onnx").inputs[0].dtype == "float32"
    patches = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    got = OnnxEngine(tmp_path, "tiny").encode(patches)  # uint8 in, cast for the graph
    assert (got - TorchEngine(*tiny).encode(patches)).abs().max() < 1e-5
    with pytest.raises(ConfigError, match="input dtype must be one of"):
        export_model(*tiny, tmp_path, input_dtype="int16")
