"""Small ONNX graph helpers shared by the export checks, the compile step and the tests.

Exported detection graphs keep part of their nodes in subgraphs (torchvision's NMS export puts
NonMaxSuppression inside an ``If`` branch), so "which ops does this graph use" must walk them too.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import onnx


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    """``domain::op_type`` (plain ``op_type`` for the default domain) -> number of nodes, subgraphs included."""
    return Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                   for n in iter_nodes(model.graph))


def node_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Attribute name -> Python value (bytes decoded to str)."""
    values = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values


def value_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type for every typed value (inputs, outputs, value_info after inference)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types
