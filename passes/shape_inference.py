"""Shape inference: ONNX's inference, then symbolic inference where it gives up.

The pass exports a weightless skeleton of the graph (weights become typed inputs, so nothing is
read from disk), runs `onnx.shape_inference.infer_shapes` with data propagation, and copies the
element type and shape of every value back into the IR. Where ONNX leaves a rank or a dim
unknown, ONNX Runtime's symbolic shape inference is tried (it derives expressions such as
`past_sequence_length + sequence_length`); its result only fills gaps, never overrides a known
dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from compiler.ir import Graph, Value
from compiler.onnx_io import export_onnx
from passes.base import Pass, PassConfig, PassContext, PassResult, register_pass

__all__ = ["ShapeInference", "infer_shapes", "bound_shapes"]


@dataclass(frozen=True)
class ShapeInferenceConfig(PassConfig):
    symbolic: bool = True  # fill gaps with ONNX Runtime's symbolic shape inference
    refresh: bool = False  # re-infer even when every value already has a full type


def _types_from(gp: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    out: dict[str, onnx.TypeProto] = {}
    for vi in list(gp.value_info) + list(gp.output) + list(gp.input):
        out[vi.name] = vi.type
    return out


def _merge(value: Value, tp: onnx.TypeProto) -> bool:
    """Fill what `value` does not know from `tp`; True if something changed."""
    if not tp.HasField("tensor_type"):
        if value.type_proto is None and value.dtype is None and tp.WhichOneof("value"):
            value.type_proto = onnx.TypeProto()
            value.type_proto.CopyFrom(tp)
            return True
        return False
    tt = tp.tensor_type
    changed = False
    if value.dtype is None and tt.elem_type:
        value.dtype = tt.elem_type
        changed = True
    if not tt.HasField("shape"):
        return changed
    # ONNX names dims it cannot work out "unk__N" (numbered afresh in every run): unknown.
    dims = [d.dim_value if d.HasField("dim_value") else
            (d.dim_param if d.dim_param and not d.dim_param.startswith("unk__") else None)
            for d in tt.shape.dim]
    if value.shape is None:
        value.shape = tuple(dims)
        return True
    if len(value.shape) != len(dims):
        return changed
    merged = tuple(old if old is not None and not (isinstance(old, str) and isinstance(new, int))
                   else new for old, new in zip(value.shape, dims))
    if merged != value.shape:
        value.shape = merged
        changed = True
    return changed


def _unknowns(graph: Graph) -> bool:
    for n in graph:
        for o in n.outputs:
            if o.name and o.type_proto is None and (
                    o.shape is None or any(d is None for d in o.shape)):
                return True
    return False


def _fully_typed(graph: Graph) -> bool:
    """Every node output (subgraphs included) has a dtype and a shape with no unknown dim."""
    for n in graph.all_nodes():
        for o in n.outputs:
            if o.name and o.type_proto is None and (
                    o.dtype is None or o.shape is None or any(d is None for d in o.shape)):
                return False
    return True


def _apply(graph: Graph, gp: onnx.GraphProto) -> bool:
    types = _types_from(gp)
    changed = False
    node_protos = list(gp.node)
    for n, np_ in zip(graph, node_protos):
        for o in n.outputs:
            tp = types.get(o.name)
            if tp is not None:
                changed |= _merge(o, tp)
        sub = {a.name: a for a in np_.attribute}
        for name, attr in n.attrs.items():
            if isinstance(attr.value, Graph) and name in sub:
                changed |= _apply(attr.value, sub[name].g)
    return changed


def _symbolic_inference():
    """ONNX Runtime's SymbolicShapeInference, loaded from its file: the package
    `onnxruntime.tools` imports torch in its __init__, which costs over a second."""
    import importlib.util
    import os
    import sys

    name = "_edgec_ort_symbolic_shape_infer"
    if name not in sys.modules:
        import onnxruntime

        path = os.path.join(os.path.dirname(onnxruntime.__file__), "tools",
                            "symbolic_shape_infer.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].SymbolicShapeInference


def infer_shapes(graph: Graph, symbolic: bool = True) -> bool:
    """Annotate every value of `graph` with its element type and shape."""
    skeleton = export_onnx(graph, skeleton=True)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception:  # ONNX gives up on some valid models; keep what we know
        inferred = skeleton
    changed = _apply(graph, inferred.graph)
    if symbolic and _unknowns(graph):
        try:
            sym = _symbolic(inferred)
            if sym is not None:
                changed |= _apply(graph, sym.graph)
        except Exception:  # symbolic inference is best effort
            pass
    return changed


def bound_shapes(graph: Graph, bindings: dict[str, int]) -> dict[str, tuple]:
    """Shapes of the values whose shape `graph` leaves (partly) unknown, inferred with its
    symbolic input dims bound to `bindings`: data propagation then reaches shapes computed
    from input sizes (silero's STFT padding, paddle's Shape -> Gather -> Concat targets). The
    graph is not changed: these shapes hold for these bindings only (the cost model uses them
    while it predicts for the bindings)."""
    gaps = {o.name for n in graph.all_nodes() for o in n.outputs if o.name
            and o.type_proto is None and (o.shape is None or any(d is None for d in o.shape))}
    if not gaps or not bindings:
        return {}
    skeleton = export_onnx(graph, skeleton=True)
    for vi in skeleton.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in bindings:
                value = int(bindings[d.dim_param])
                d.Clear()
                d.dim_value = value
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception:
        return {}
    types = _all_types(inferred.graph)
    if any(n in gaps and not _complete(types.get(n)) for n in gaps):
        try:
            sym = _symbolic(inferred)
            if sym is not None:
                types.update({k: v for k, v in _all_types(sym.graph).items()
                              if _complete(v) or k not in types})
        except Exception:
            pass
    out = {}
    for name in gaps:
        tp = types.get(name)
        if tp is not None and tp.tensor_type.HasField("shape"):
            out[name] = tuple(d.dim_value if d.HasField("dim_value") else None
                              for d in tp.tensor_type.shape.dim)
    return out


def _all_types(gp: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """`_types_from` of a graph and, recursively, of its subgraphs (If/Loop bodies)."""
    out = _types_from(gp)
    for node in gp.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                out.update({k: v for k, v in _all_types(sub).items() if k not in out})
    return out


def _complete(tp: onnx.TypeProto | None) -> bool:
    return tp is not None and tp.tensor_type.HasField("shape") and all(
        d.HasField("dim_value") for d in tp.tensor_type.shape.dim)


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic inference, keeping what it inferred when it cannot infer all.

    Its `infer_shapes` saves `sym_shape_infer_temp.onnx` into the working directory and raises
    when some shape stays unknown; edgec never writes outside the user's output folder, and a
    partial answer still fills gaps, so the same steps run here without that save."""
    cls = _symbolic_inference()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 7:
        return None
    ssi = cls(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    ssi._preprocess(model)
    while ssi.run_:
        ssi._infer_impl()
    ssi._update_output_from_vi()
    return ssi.out_mp_


@register_pass
class ShapeInference(Pass):
    """Annotate values with dtypes and (symbolic) shapes."""

    name = "shape_inference"
    Config = ShapeInferenceConfig

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not self.config.refresh and _fully_typed(graph):
            # passes keep the types of what they create; nothing to learn from a re-run
            return PassResult(False, {"values_without_shape": 0, "skipped": "all typed"})
        changed = infer_shapes(graph, self.config.symbolic)
        unknown = sum(1 for n in graph for o in n.outputs
                      if o.name and o.type_proto is None and o.shape is None)
        return PassResult(changed, {"values_without_shape": unknown})
