"""The ``rddn`` custom ops: eager semantics = the model's pooling; export as single custom-domain nodes with FP16
features and FP32 rois; the TensorRT-variant ONNX runs on CPU through ``onnx.reference`` and matches PyTorch."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

from engines import custom_ops as co
from engines import host_kernels as hk
from training.model import roi_semantics as rs
from training.model.roi_pooling import RoIFeaturePooler

torch.set_num_threads(1)
IMAGE = (64, 96)


def _features(batch: int = 2, channels: int = 4, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(batch, channels, IMAGE[0] // s, IMAGE[1] // s, generator=gen).to(dtype)
            for s in rs.ROI_STRIDES]


def _rois() -> torch.Tensor:
    boxes = torch.tensor([
        [1.0, 1.0, 30.0, 30.0], [10.0, 5.0, 90.0, 60.0], [-3.0, 40.0, 20.0, 70.0], [0.0, 0.0, 96.0, 64.0],
        [40.0, 20.0, 40.5, 20.5], [5.0, 5.0, 400.0, 300.0], [60.0, 30.0, 95.0, 63.0],
    ])
    batch = (torch.arange(len(boxes)) % 2).float()[:, None]
    return torch.cat([batch, boxes], dim=1)


@pytest.mark.parametrize("mode", ["none", "concat", "context_only"])
def test_eager_ops_equal_the_models_pooler(mode: str) -> None:
    feats, rois = _features(), _rois()
    sizes = torch.tensor([IMAGE, IMAGE])
    expected = RoIFeaturePooler(context=mode, k=1.5)(feats, rois, sizes)
    if mode == "none":
        got = co.multilevel_roi_align(feats, rois)
    else:
        got = co.context_roi_align(feats, rois, image_height=IMAGE[0], image_width=IMAGE[1], mode=mode)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_fake_shapes_follow_mode() -> None:
    feats, rois = _features(), _rois()
    for mode, channels in (("concat", 8), ("context_only", 4)):
        pooled = co.context_roi_align(feats, rois, image_height=IMAGE[0], image_width=IMAGE[1], mode=mode)
        assert pooled.shape == (len(rois), channels, 7, 7)


def test_attributes_that_break_the_model_definition_are_rejected() -> None:
    feats, rois = _features(), _rois()
    with pytest.raises(ValueError, match="canonical_scale"):
        co.multilevel_roi_align_reference(feats, rois, co.RoIPoolingAttributes(canonical_scale=224.0))
    with pytest.raises(ValueError, match="image size"):
        co.context_roi_align_reference(feats, rois, co.ContextAttributes())
    with pytest.raises(ValueError, match="image size"):
        co.context_roi_align(feats, rois, image_height=0, image_width=IMAGE[1])
    with pytest.raises(ValueError, match="rois must be float32"):
        co.multilevel_roi_align_reference(feats, rois.double())
    with pytest.raises(ValueError, match="expected 4 feature levels"):
        co.multilevel_roi_align_reference(feats[:3], rois)


class _TinyPoolingNet(torch.nn.Module):
    """A small stand-in for the detector around the pooling: conv features cast to FP16, both custom ops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(image / 255.0)
        feats = [torch.nn.functional.avg_pool2d(x, s).half() for s in rs.ROI_STRIDES]
        pooled = co.multilevel_roi_align(feats, rois)
        context = co.context_roi_align(feats, rois, image_height=IMAGE[0], image_width=IMAGE[1], k=1.5)
        return pooled, context


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def exported(request) -> tuple[torch.nn.Module, onnx.ModelProto]:
    """The same net through both exporters: dynamo (translation table) and TorchScript (symbolics)."""
    torch.manual_seed(0)
    net = _TinyPoolingNet().eval()
    image = torch.rand(2, 3, *IMAGE) * 255
    names = dict(input_names=["image", "rois"], output_names=["pooled", "context"])
    if request.param == "dynamo":
        program = torch.onnx.export(
            net, (image, _rois()), dynamo=True, custom_translation_table=co.onnx_translation_table(),
            dynamic_shapes={"image": None, "rois": {0: torch.export.Dim("R", min=1, max=4096)}}, verbose=False,
            **names,
        )
        return net, program.model_proto
    co.register_onnx_symbolics(17)
    buffer = io.BytesIO()
    torch.onnx.export(net, (image, _rois()), buffer, dynamo=False, opset_version=17,
                      custom_opsets={co.DOMAIN: co.DOMAIN_VERSION}, dynamic_axes={"rois": {0: "R"}}, **names)
    return net, onnx.load_from_string(buffer.getvalue())


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {}
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    for value in [*inferred, *model.graph.value_info, *model.graph.input, *model.graph.output]:
        types[value.name] = value.type.tensor_type.elem_type
    return types


def test_export_has_plugin_nodes_with_attributes_and_dtypes(exported) -> None:
    _, model = exported
    co.register_onnx_schemas()
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.domain == co.DOMAIN]
    assert sorted(n.op_type for n in nodes) == [co.CONTEXT_OP, co.MULTILEVEL_OP]
    assert any(o.domain == co.DOMAIN and o.version == co.OPSET_VERSION for o in model.opset_import)
    types = _value_types(model)
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"rddn"
        np.testing.assert_allclose(attrs["spatial_scales"], rs.ROI_ALIGN.spatial_scales)
        assert (attrs["output_size"], attrs["sampling_ratio"], attrs["aligned"]) == (7, 2, 1)
        assert attrs["canonical_scale"] == rs.CANONICAL_SCALE
        assert np.float32(attrs["level_eps"]) == np.float32(rs.LEVEL_EPS)
        assert len(node.input) == 5 and node.input[4] == "rois"
        assert [types[name] for name in node.input[:4]] == [onnx.TensorProto.FLOAT16] * 4
        assert types["rois"] == onnx.TensorProto.FLOAT
        assert types[node.output[0]] == onnx.TensorProto.FLOAT16
        if node.op_type == co.CONTEXT_OP:
            assert (attrs["image_height"], attrs["image_width"]) == IMAGE
            assert attrs["k"] == 1.5 and attrs["mode"] == b"concat"


def test_reference_evaluator_runs_the_trt_variant_like_pytorch(exported) -> None:
    net, model = exported
    image = torch.rand(2, 3, *IMAGE, generator=torch.Generator().manual_seed(3)) * 255
    rois = _rois()[:5]  # a different R than at export: the RoI count is dynamic
    with torch.no_grad():
        expected = [t.numpy() for t in net(image, rois)]
    got = co.run_reference(model, {"image": image.numpy(), "rois": rois.numpy()})
    for g, e in zip(got, expected):
        assert g.dtype == np.float16 and g.shape == e.shape
        np.testing.assert_allclose(g.astype(np.float32), e.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_host_kernels_agree_with_the_custom_ops_fp16() -> None:
    feats, rois = _features(dtype=torch.float16), _rois()
    expected = co.context_roi_align(feats, rois, image_height=IMAGE[0], image_width=IMAGE[1]).float().numpy()
    got = hk.context_roi_align([f.numpy() for f in feats], rois.numpy(), hk.default_attributes(IMAGE))
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=1e-3, atol=1e-3)


def test_trt_variant_graph_runs_with_the_kernels_host_build(exported) -> None:
    """The whole graph with the plugins' CUDA source (built for the CPU) doing the pooling = PyTorch."""
    net, model = exported
    image = torch.rand(2, 3, *IMAGE, generator=torch.Generator().manual_seed(5)) * 255
    feeds = {"image": image.numpy(), "rois": _rois().numpy()}
    with torch.no_grad():
        expected = [t.numpy() for t in net(image, _rois())]
    got = co.run_reference(model, feeds, implementation="host_kernels")
    for g, e in zip(got, expected):
        assert g.dtype == np.float16 and g.shape == e.shape
        np.testing.assert_allclose(g.astype(np.float32), e.astype(np.float32), rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="implementation"):
        co.reference_ops("cuda")  # type: ignore[arg-type]
