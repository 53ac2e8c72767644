"""Whole-graph FP16/BF16 conversion for strongly typed backends (TensorRT 10+/11).

Schema-driven: FP32 tensors bound to an ONNX type parameter that allows the half type become
half; slots typed `tensor(float)` (Resize `scales`), shape arithmetic (values derived from
Shape/Size), ops with subgraphs, custom domains or random outputs, and nodes annotated
`meta["precision"] = "fp32"` stay FP32; a Cast goes wherever producer and consumer types
differ. Constants are converted (clipped to |x| <= 65504 for FP16), not cast; graph I/O stays
FP32 so callers feed and read the same arrays as before.
"""

from __future__ import annotations

import numpy as np
import onnx

from compiler.errors import CompileError
from compiler.ir import Graph, Node, Tensor, Value, constant_value, is_constant
from compiler.onnx_io import export_onnx, import_onnx

__all__ = ["to_fp16", "value_types"]

_F32, _F16, _BF16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
_KEEP_FP32 = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                        "EyeLike", "Multinomial", "Bernoulli", "Constant"})
_ANY_INPUT = frozenset({"Cast", "CastLike", "Shape", "Size"})  # input 0 may have any type


def value_types(graph: Graph) -> dict[str, int]:
    """Element type of every root-graph value, from the IR and ONNX type inference."""
    skeleton = export_onnx(graph, skeleton=True)
    try:
        skeleton = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
    except Exception:  # inference gives up on some valid models; use what the IR knows
        pass
    gp = skeleton.graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(gp.value_info) + list(gp.input) + list(gp.output)
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    for v in graph.values():
        if v.dtype:
            types[v.name] = v.dtype
    return types


def _copy(graph: Graph) -> Graph:
    new = import_onnx(export_onnx(graph), base_dir=graph.model.base_dir)
    for a, b in zip(graph, new):
        b.meta = dict(a.meta)
    return new


def _const_array(v: Value) -> np.ndarray:
    arr = constant_value(v)
    if arr is None:
        raise CompileError(f"{v.name!r} is not a readable constant; fold it first")
    return arr

def _const_size(v: Value) -> int:
    if v.const is not None:
        return v.const.size
    attr = v.producer.attrs.get("value")  # type: ignore[union-attr]
    return attr.value.size if attr is not None else 1


def _to_half(array: np.ndarray, dtype: int) -> np.ndarray:
    if dtype == _F16:
        return np.clip(array, -65504.0, 65504.0).astype(np.float16)
    import ml_dtypes

    return array.astype(ml_dtypes.bfloat16)


def _formals(schema: onnx.defs.OpSchema, params: list, n: int) -> list[str]:
    out = []
    for i in range(n):
        if i < len(params):
            out.append(params[i].type_str)
        elif params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            out.append(params[-1].type_str)
        else:
            out.append("")
    return out


class _Converter:
    def __init__(self, graph: Graph, dtype: int, keep: frozenset[str]) -> None:
        self.g, self.dtype, self.keep = graph, dtype, keep
        self.half = onnx.helper.tensor_dtype_to_string(dtype).replace("TensorProto.", "").lower()
        self.half_str = "tensor(float16)" if dtype == _F16 else "tensor(bfloat16)"
        self.orig = value_types(graph)
        self.cur: dict[int, int] = {}  # id(value) -> type after conversion, when changed
        self.cache: dict[tuple[int, int], Value] = {}
        self.opset = graph.opset_imports.get("", 17)
        self.shape_vals: set[int] = set()

    def typ(self, v: Value) -> int:
        return self.cur.get(id(v), self.orig.get(v.name, 0))

    def as_type(self, v: Value, dtype: int) -> Value:
        """`v` as `dtype`: a converted constant, or a Cast placed right after its producer."""
        key = (id(v), dtype)
        if key in self.cache:
            return self.cache[key]
        if is_constant(v) and dtype in (_F16, _BF16):
            new = self.g.make_constant(_to_half(_const_array(v), dtype), f"{v.name}_{self.half}")
        else:
            new = Value(self.g.unique_name(f"{v.name}_to{'32' if dtype == _F32 else '16'}"),
                        dtype, v.shape)
            cast = Node("Cast", [v], [new], name=self.g.unique_name("edgec_cast"))
            cast.set_attr("to", dtype, onnx.AttributeProto.INT)
            if v.producer is not None and v.producer.graph is self.g:
                self.g.insert_after(v.producer, cast)
            elif self.g._head is not None:
                self.g.insert_before(self.g._head, cast)
            else:
                self.g.append(cast)
        self.cache[key] = new
        return new

    def _shape_math(self, node: Node) -> bool:
        """Shape/Size, or arithmetic on their results (a float constant of more than 16
        elements is data, e.g. a weight sliced at a computed offset, not shape math)."""
        if node.op_type in ("Shape", "Size") and not node.domain:
            return True
        live = [v for v in node.inputs if v is not None and not is_constant(v)]
        if not live or any(id(v) not in self.shape_vals for v in live):
            return False
        return not any(v is not None and is_constant(v) and self.orig.get(v.name) == _F32
                       and _const_size(v) > 16 for v in node.inputs)

    def _convertible(self, node: Node) -> onnx.defs.OpSchema | None:
        if node.domain or node.op_type in self.keep or next(node.subgraphs(), None) is not None:
            return None
        if str(node.meta.get("precision", "")).lower() in ("fp32", "float32"):
            return None
        try:
            return onnx.defs.get_schema(node.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return None

    def plan(self, node: Node) -> tuple[list[int | None], list[int | None]]:
        """Required type per input slot and new type per output (None: unchanged)."""
        req: list[int | None] = [None] * len(node.inputs)
        outs: list[int | None] = [None] * len(node.outputs)
        schema = None if self._shape_math(node) else self._convertible(node)
        if schema is None:  # kept: every input in its original type
            for i, v in enumerate(node.inputs):
                if v is not None and self.typ(v) != self.orig.get(v.name, 0) \
                        and not (i == 0 and node.op_type in _ANY_INPUT):
                    req[i] = self.orig.get(v.name) or None
            return req, outs
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        fin = _formals(schema, list(schema.inputs), len(node.inputs))
        fout = _formals(schema, list(schema.outputs), len(node.outputs))
        half: set[str] = set()
        params = sorted(set(fin), key=lambda q: q not in fout)  # output-bound params first
        for p in params:
            bound = [v for v, q in zip(node.inputs, fin) if q == p and v is not None]
            if not any(self.orig.get(v.name) == _F32 for v in bound):
                continue
            if self.half_str not in allowed.get(p, ()):
                continue
            live = [v for v in bound if not is_constant(v)]
            if p in fout or any(self.typ(v) == self.dtype for v in live) or (half and not live):
                half.add(p)
        for i, (v, p) in enumerate(zip(node.inputs, fin)):
            if v is None or self.orig.get(v.name) != _F32:
                continue
            if node.op_type in _ANY_INPUT and i == 0:
                continue
            req[i] = self.dtype if p in half else _F32
        for k, (v, p) in enumerate(zip(node.outputs, fout)):
            if p in half and self.orig.get(v.name) == _F32:
                outs[k] = self.dtype
        if node.op_type == "Cast" and node.attr("to") == _F32:
            node.set_attr("to", self.dtype, onnx.AttributeProto.INT)
            outs[0] = self.dtype
        elif node.op_type == "ConstantOfShape" and "value" in node.attrs:
            t = node.attr("value")
            if t.dtype == _F32:
                arr = _to_half(np.asarray(t.numpy()), self.dtype)
                node.set_attr("value", Tensor.from_numpy(arr, t.name), onnx.AttributeProto.TENSOR)
                outs[0] = self.dtype
        return req, outs

    def run(self) -> None:
        g = self.g
        for node in list(g):
            if self._shape_math(node):
                self.shape_vals.update(id(o) for o in node.outputs)
            req, outs = self.plan(node)
            for i, want in enumerate(req):
                v = node.inputs[i]
                if want is not None and v is not None and self.typ(v) != want:
                    node.set_input(i, self.as_type(v, want))
            for v, t in zip(node.outputs, outs):
                if t is not None:
                    self.cur[id(v)] = t
                    v.dtype = t
            if any(t == self.dtype for t in outs) and node.op_type != "Cast":
                node.meta["precision"] = "fp16" if self.dtype == _F16 else "bf16"
        for node in list(g):  # readers inside subgraphs expect the original types
            for sg in node.subgraphs():
                for inner in sg.all_nodes():
                    for i, v in enumerate(inner.inputs):
                        if v is not None and v.graph is g and id(v) in self.cur:
                            inner.set_input(i, self.as_type(v, self.orig.get(v.name, _F32)))
        for k, v in enumerate(list(g.outputs)):  # graph outputs keep their names and FP32
            if id(v) in self.cur and self.orig.get(v.name) == _F32:
                name = v.name
                v.name = g.unique_name(f"{name}_{self.half}")
                out = Value(name, _F32, v.shape)
                cast = Node("Cast", [v], [out], name=g.unique_name("edgec_cast_out"))
                cast.set_attr("to", _F32, onnx.AttributeProto.INT)
                g.append(cast)
                g.outputs[k] = out
        for node in list(g):
            if node.op_type == "Constant" and not any(o.uses or o.is_graph_output()
                                                      for o in node.outputs):
                g.remove(node)
        g.remove_unused_initializers()


def to_fp16(graph: Graph, *, dtype: str = "fp16", keep_fp32_ops: frozenset[str] = frozenset(),
            inplace: bool = False) -> Graph:
    """The graph computing in FP16 (or "bf16"), FP32 at its inputs and outputs.

    Nodes annotated `meta["precision"] = "fp32"`, ops in `keep_fp32_ops`, shape arithmetic,
    custom-domain ops and ops with subgraphs stay FP32. Returns a copy unless `inplace`.
    """
    elem = {"fp16": _F16, "bf16": _BF16}.get(dtype)
    if elem is None:
        raise CompileError(f"to_fp16 converts to fp16 or bf16, not {dtype!r}")
    g = graph if inplace else _copy(graph)
    g.topological_sort()
    _Converter(g, elem, _KEEP_FP32 | frozenset(keep_fp32_ops)).run()
    g.model.metadata_props["edgec.precision"] = dtype
    return g


# ---------------------------------------------------------------------------------------------
# optimization profiles
