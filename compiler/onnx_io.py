"""ONNX ⇄ IR, lossless.

`import_onnx` reads a path, bytes or ModelProto without loading external weights (they are
memory-mapped on first use) and validates what a compiler must not guess about: every node
input is produced somewhere, there is no cycle, every op exists in its domain at the imported
opset, dims are sane, and external data stays inside the model's folder. A negative dim (how
paddle2onnx writes a dynamic one) reads as unknown; `passes/normalize.py` then names it.

`export_onnx` writes the graph back. Unchanged tensors are emitted from their original bytes,
so `export_onnx(import_onnx(m))` gives bit-identical results. With a path, weights that came
from external data (or a model over 2 GB) are written as external data, streamed from the
source file in chunks so a 3 GB model never sits in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from compiler.errors import ExternalDataError, InvalidModelError
from compiler.ir import Attr, Graph, Node, Value
from compiler.tensor import ExternalRef, Tensor, safe_join

__all__ = ["import_onnx", "export_onnx", "load_model_proto", "node_to_proto",
           "fits_in_one_protobuf", "MIN_OPSET", "MAX_OPSET"]

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
_TWO_GB = 2**31 - 1
_MAX_DIM = 2**31 - 1
# Domains edgec accepts without a schema in onnx.defs (ONNX Runtime's contrib ops).
_TRUSTED_DOMAINS = {"com.microsoft", "com.microsoft.nchwc", "ai.onnx.contrib", "edgec",
                    "trt", "com.ms.internal.nhwc"}
_STANDARD_DOMAINS = {"", "ai.onnx.ml", "ai.onnx.preview.training"}
_CHUNK = 16 << 20


# ---------------------------------------------------------------------------------------------
# reading
def load_model_proto(source: str | os.PathLike | bytes | onnx.ModelProto
                     ) -> tuple[onnx.ModelProto, str | None]:
    """Parse `source` into a ModelProto (external data not loaded) and its folder."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "<bytes>"), None
    path = Path(source)
    if not path.exists():
        raise InvalidModelError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise InvalidModelError(f"{str(path)!r} is a folder; pass the .onnx file inside it")
    size = path.stat().st_size
    if size == 0:
        raise InvalidModelError(f"model file {str(path)!r} is empty")
    if size > _TWO_GB:
        raise InvalidModelError(
            f"model file {str(path)!r} is {size / 2**30:.1f} GB; ONNX protobufs are limited to "
            "2 GB, so save the weights as external data (onnx.save_model(..., "
            "save_as_external_data=True))")
    return _parse(path.read_bytes(), str(path)), str(path.resolve().parent)


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InvalidModelError(
            f"{where} is not a readable ONNX model (protobuf decoding failed: {e}); "
            "the file may be truncated or not an .onnx file") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise InvalidModelError(
            f"{where} is not an ONNX model (no ir_version, graph or opset_import); "
            "export it with torch.onnx.export or onnx.save_model")
    return model


def import_onnx(source: str | os.PathLike | bytes | onnx.ModelProto, *,
                base_dir: str | os.PathLike | None = None) -> Graph:
    """Build the IR for an ONNX model. `base_dir` locates external data for bytes/protos."""
    model, folder = load_model_proto(source)
    if base_dir is not None:
        folder = str(Path(base_dir).resolve())
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    default = opsets.get("")
    if default is None:
        raise InvalidModelError("the model does not import the default ONNX opset")
    if not MIN_OPSET <= default <= MAX_OPSET:
        raise InvalidModelError(
            f"the model uses ONNX opset {default}; edgec reads opsets {MIN_OPSET} to {MAX_OPSET}"
            " (convert it with onnx.version_converter.convert_version)")
    functions = {(f.domain, f.name) for f in model.functions}
    reader = _Reader(folder, opsets, functions)
    graph = reader.graph(model.graph, None)
    graph.opset_imports = opsets
    info = graph.model
    info.ir_version = model.ir_version
    info.producer_name = model.producer_name
    info.producer_version = model.producer_version
    info.domain = model.domain
    info.model_version = model.model_version
    info.doc_string = model.doc_string
    info.metadata_props = {p.key: p.value for p in model.metadata_props}
    info.functions = list(model.functions)
    info.training_info = list(model.training_info)
    info.base_dir = folder
    return graph


class _Reader:
    def __init__(self, folder: str | None, opsets: dict[str, int],
                 functions: set[tuple[str, str]]) -> None:
        self.folder = folder
        self.opsets = opsets
        self.functions = functions

    # -- tensors -------------------------------------------------------------------------------
    def tensor(self, t: onnx.TensorProto) -> Tensor:
        for d in t.dims:
            if d < 0:
                raise InvalidModelError(f"initializer {t.name!r} has a negative dim {list(t.dims)}")
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return self._external(t)
        tensor = Tensor(t.name, t.data_type, tuple(t.dims), proto=t, doc_string=t.doc_string)
        if t.HasField("raw_data") and t.data_type not in (onnx.TensorProto.STRING,):
            if len(t.raw_data) != tensor.nbytes:
                raise InvalidModelError(
                    f"initializer {t.name!r} holds {len(t.raw_data)} bytes but its dims "
                    f"{list(t.dims)} need {tensor.nbytes}; the model is truncated or corrupt")
        return tensor

    def _external(self, t: onnx.TensorProto) -> Tensor:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if not location:
            raise ExternalDataError(f"tensor {t.name!r} is external but names no location")
        if self.folder is None:
            raise ExternalDataError(
                f"tensor {t.name!r} keeps its weights in external file {location!r}, but the "
                "model was given as bytes/ModelProto; load it from its path or pass base_dir=")
        path = safe_join(self.folder, location, t.name)
        if not os.path.isfile(path):
            raise ExternalDataError(
                f"external data file {location!r} of tensor {t.name!r} is missing next to the "
                "model; copy it into the model's folder")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            offset = length = -1
        if offset < 0 or (length is not None and length < 0):
            raise ExternalDataError(
                f"external data of tensor {t.name!r} ({location!r}) has offset "
                f"{info.get('offset')!r} and length {info.get('length')!r}; both must be "
                "non-negative integers")
        tensor = Tensor(t.name, t.data_type, tuple(t.dims),
                        external=ExternalRef(path, offset, None), doc_string=t.doc_string)
        length = tensor.nbytes if length is None else length
        if offset + length > os.path.getsize(path) or length < tensor.nbytes:
            raise ExternalDataError(
                f"external data of tensor {t.name!r} ({location!r}, offset {offset}, "
                f"length {length}) runs past the end of the file; the data file is truncated")
        tensor._external = ExternalRef(path, offset, length)
        return tensor

    # -- types ----------------------------------------------------------------------------------
    def apply_type(self, value: Value, vi: onnx.ValueInfoProto | onnx.TypeProto,
                   check: bool = False) -> None:
        tp = vi.type if isinstance(vi, onnx.ValueInfoProto) else vi
        if tp.HasField("tensor_type"):
            tt = tp.tensor_type
            value.dtype = tt.elem_type or None
            if tt.HasField("shape"):
                dims: list[Any] = []
                for d in tt.shape.dim:
                    if d.HasField("dim_value") and d.dim_value < 0:
                        dims.append(None)  # paddle2onnx writes dynamic dims as -1: unknown
                    elif d.HasField("dim_value"):
                        if check and d.dim_value > _MAX_DIM:
                            raise InvalidModelError(
                                f"input {value.name!r} has an absurd dimension {d.dim_value}; "
                                "dims must lie in [0, 2^31)")
                        dims.append(int(d.dim_value))
                    elif d.HasField("dim_param"):
                        dims.append(d.dim_param)
                    else:
                        dims.append(None)
                value.shape = tuple(dims)
            else:
                value.shape = None
        elif tp.WhichOneof("value") is not None:
            value.type_proto = onnx.TypeProto()
            value.type_proto.CopyFrom(tp)
        if isinstance(vi, onnx.ValueInfoProto):
            value.doc_string = vi.doc_string
            value.metadata_props = {p.key: p.value for p in vi.metadata_props}

    # -- graphs ---------------------------------------------------------------------------------
    def graph(self, gp: onnx.GraphProto, parent: Graph | None,
              scope: dict[str, Value] | None = None) -> Graph:
        g = Graph(gp.name, parent=parent)
        g.doc_string = gp.doc_string
        g.metadata_props = {p.key: p.value for p in gp.metadata_props}
        g.quantization_annotation = list(gp.quantization_annotation)
        local: dict[str, Value] = {}
        for vi in gp.input:
            v = Value(vi.name)
            self.apply_type(v, vi, check=parent is None)
            local[vi.name] = g.add_input(v)
        for t in gp.initializer:
            tensor = self.tensor(t)
            v = local.get(t.name)
            if v is None:
                v = Value(t.name, t.data_type, tensor.dims)
                local[t.name] = v
            v.const = tensor
            g.add_initializer(v)
        for sp in gp.sparse_initializer:
            dense_dims = tuple(sp.dims)
            tensor = Tensor(sp.values.name, sp.values.data_type, dense_dims, sparse=sp)
            v = local.get(sp.values.name) or Value(sp.values.name, sp.values.data_type,
                                                    dense_dims)
            local[sp.values.name] = v
            v.const = tensor
            g.add_initializer(v)
        # Create every node and its outputs first, then wire inputs, so forward references
        # (non-topological order) and cycles are diagnosed instead of mis-read.
        nodes: list[tuple[Node, onnx.NodeProto]] = []
        for i, np_ in enumerate(gp.node):
            self._check_op(np_, i)
            outs = []
            for name in np_.output:
                v = Value(name)
                if name:
                    local[name] = v
                outs.append(v)
            node = Node(np_.op_type, (), outs, domain=np_.domain, name=np_.name,
                        overload=np_.overload)
            node.doc_string = np_.doc_string
            node.metadata_props = {p.key: p.value for p in np_.metadata_props}
            g.append(node)
            nodes.append((node, np_))
        chain = dict(scope or {})
        chain.update(local)
        for node, np_ in nodes:
            for name in np_.input:
                if not name:
                    node.append_input(None)
                    continue
                v = chain.get(name)
                if v is None:
                    raise InvalidModelError(
                        f"node {np_.name or np_.op_type!r} ({np_.op_type}) reads {name!r}, which "
                        "no node, input or initializer produces")
                node.append_input(v)
            for a in np_.attribute:
                node.attrs[a.name] = self.attr(a, g, chain)
        for vi in gp.value_info:
            v = local.get(vi.name)
            if v is not None:
                self.apply_type(v, vi)
        for vi in gp.output:
            v = chain.get(vi.name)
            if v is None:
                raise InvalidModelError(
                    f"graph output {vi.name!r} is not produced by any node, input or initializer")
            self.apply_type(v, vi)
            g.outputs.append(v)
        g.topological_sort()
        return g

    def attr(self, a: onnx.AttributeProto, g: Graph, scope: dict[str, Value]) -> Attr:
        T = onnx.AttributeProto
        if a.ref_attr_name:
            value: Any = None
        elif a.type == T.GRAPH:
            value = self.graph(a.g, g, scope)
        elif a.type == T.GRAPHS:
            value = [self.graph(x, g, scope) for x in a.graphs]
        elif a.type == T.TENSOR:
            value = self.tensor(a.t)
        elif a.type == T.TENSORS:
            value = [self.tensor(x) for x in a.tensors]
        else:
            value = onnx.helper.get_attribute_value(a)
        return Attr(a.name, a.type, value, a.doc_string, a.ref_attr_name)

    def _check_op(self, np_: onnx.NodeProto, i: int) -> None:
        domain = "" if np_.domain == "ai.onnx" else np_.domain
        label = np_.name or f"#{i}"
        if (domain, np_.op_type) in self.functions:
            return
        if domain not in self.opsets:
            raise InvalidModelError(
                f"node {label!r} uses op domain {domain or 'ai.onnx'!r}, which the model does "
                "not import (add it to opset_import)")
        if domain in _STANDARD_DOMAINS:
            try:
                onnx.defs.get_schema(np_.op_type, self.opsets[domain], domain)
            except onnx.defs.SchemaError:
                raise InvalidModelError(
                    f"node {label!r} has op {np_.op_type!r}, which does not exist in domain "
                    f"{domain or 'ai.onnx'!r} at opset {self.opsets[domain]}") from None
        elif domain not in _TRUSTED_DOMAINS:
            raise InvalidModelError(
                f"node {label!r} uses unknown op domain {domain!r} (op {np_.op_type!r}); "
                "edgec reads ai.onnx, ai.onnx.ml, com.microsoft and model-local functions")


# ---------------------------------------------------------------------------------------------
# writing
class _Writer:
    def __init__(self, data_file: str | None, data_name: str, threshold: int,
                 skeleton: bool) -> None:
        self.data_file = data_file
        self.data_name = data_name
        self.threshold = threshold
        self.skeleton = skeleton
        self.offset = 0
        self._fh = None
        self.names: set[str] = set()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def tensor(self, t: Tensor) -> onnx.TensorProto:
        if (self.data_file is None or t.nbytes < self.threshold
                or t.dtype == onnx.TensorProto.STRING):
            return t.to_proto(inline=True)
        if self._fh is None:
            self._fh = open(self.data_file, "wb")  # noqa: SIM115
        align = 4096 if t.nbytes >= 65536 else 64
        pad = (-self.offset) % align
        if pad:
            self._fh.write(b"\0" * pad)
            self.offset += pad
        start = self.offset
        self.offset += _stream(t, self._fh)
        p = onnx.TensorProto(name=t.name, data_type=t.dtype, dims=t.dims,
                             doc_string=t.doc_string)
        p.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", self.data_name), ("offset", str(start)),
                     ("length", str(self.offset - start))):
            e = p.external_data.add()
            e.key, e.value = k, v
        return p

    def value_info(self, v: Value) -> onnx.ValueInfoProto:
        vi = onnx.ValueInfoProto(name=v.name, doc_string=v.doc_string)
        if v.type_proto is not None:
            vi.type.CopyFrom(v.type_proto)
        elif v.dtype is not None:
            tt = vi.type.tensor_type
            tt.elem_type = v.dtype
            if v.shape is not None:
                shape = tt.shape
                shape.SetInParent()
                for d in v.shape:
                    dim = shape.dim.add()
                    if isinstance(d, int):
                        dim.dim_value = d
                    elif isinstance(d, str):
                        dim.dim_param = d
        for k, val in v.metadata_props.items():
            vi.metadata_props.add(key=k, value=val)
        return vi

    def graph(self, g: Graph, gp: onnx.GraphProto | None = None) -> onnx.GraphProto:
        if gp is None:
            gp = onnx.GraphProto()
        gp.name, gp.doc_string = g.name, g.doc_string
        for k, val in g.metadata_props.items():
            gp.metadata_props.add(key=k, value=val)
        input_ids = {id(v) for v in g.inputs}
        for v in g.inputs:
            gp.input.append(self.value_info(v))
        skeleton_inputs = []
        for v in g.initializers.values():
            t = v.const
            assert t is not None
            t.name = v.name
            if t.is_sparse:
                gp.sparse_initializer.append(t.sparse_proto())
            elif self.skeleton and t.nbytes >= self.threshold and id(v) not in input_ids:
                skeleton_inputs.append(self.value_info(v))
            else:
                gp.initializer.append(self.tensor(t))
        gp.input.extend(skeleton_inputs)
        names = set()
        for n in g:
            gp.node.append(self.node(n))
            for o in n.outputs:
                if o.name:
                    if o.name in names:
                        raise RuntimeError(f"internal error: value name {o.name!r} defined twice")
                    names.add(o.name)
                    if o.dtype is not None or o.type_proto is not None:
                        if not o.is_graph_output():
                            gp.value_info.append(self.value_info(o))
        for v in g.outputs:
            gp.output.append(self.value_info(v))
        gp.quantization_annotation.extend(g.quantization_annotation)
        return gp

    def node(self, n: Node) -> onnx.NodeProto:
        p = onnx.NodeProto(op_type=n.op_type, domain=n.domain, name=n.name,
                           doc_string=n.doc_string, overload=n.overload)
        p.input.extend(v.name if v is not None else "" for v in n.inputs)
        p.output.extend(v.name for v in n.outputs)
        for k, val in n.metadata_props.items():
            p.metadata_props.add(key=k, value=val)
        for a in n.attrs.values():
            p.attribute.append(self.attr(a))
        return p

    def attr(self, a: Attr) -> onnx.AttributeProto:
        T = onnx.AttributeProto
        if a.ref_attr_name:
            p = onnx.AttributeProto(name=a.name, type=a.type, ref_attr_name=a.ref_attr_name)
        elif a.type == T.GRAPH:
            p = onnx.AttributeProto(name=a.name, type=T.GRAPH)
            p.g.CopyFrom(self.graph(a.value))
        elif a.type == T.GRAPHS:
            p = onnx.AttributeProto(name=a.name, type=T.GRAPHS)
            p.graphs.extend(self.graph(x) for x in a.value)
        elif a.type == T.TENSOR:
            p = onnx.AttributeProto(name=a.name, type=T.TENSOR)
            p.t.CopyFrom(a.value.to_proto(inline=True))
        elif a.type == T.TENSORS:
            p = onnx.AttributeProto(name=a.name, type=T.TENSORS)
            p.tensors.extend(x.to_proto(inline=True) for x in a.value)
        else:
            p = onnx.helper.make_attribute(a.name, a.value, attr_type=a.type)
        if a.doc_string:
            p.doc_string = a.doc_string
        return p


def _stream(t: Tensor, fh) -> int:
    """Copy a tensor's bytes into `fh` without materialising large external data."""
    ref = t.external
    if ref is not None and t._array is None:
        remaining = ref.length if ref.length is not None else t.nbytes
        total = remaining
        with open(ref.path, "rb") as src:
            src.seek(ref.offset)
            while remaining:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ExternalDataError(f"external data of {t.name!r} ended early")
                fh.write(chunk)
                remaining -= len(chunk)
        return total
    data = t.read_bytes()
    fh.write(data)
    return len(data)


def _total_bytes(g: Graph) -> int:
    n = sum(v.const.nbytes for v in g.initializers.values() if v.const is not None)
    for node in g:
        for sg in node.subgraphs():
            n += _total_bytes(sg)
    return n


def fits_in_one_protobuf(graph: Graph) -> bool:
    """Whether the model can be one in-memory ModelProto (2 GB limit, with room for the graph)."""
    return _total_bytes(graph) <= _TWO_GB - (64 << 20)


def _has_external(g: Graph) -> bool:
    return any(v.const is not None and v.const.external is not None
               for v in g.initializers.values())


def export_onnx(graph: Graph, path: str | os.PathLike | None = None, *,
                external_data: bool | None = None, size_threshold: int = 1024,
                skeleton: bool = False) -> onnx.ModelProto:
    """The ModelProto for `graph`; with `path`, also write it (and its external data).

    `external_data=None` writes weights externally when the source had external data or the
    model would exceed 2 GB. `skeleton=True` replaces weights of `size_threshold` bytes or more
    by typed graph inputs: a light model for shape inference that never touches weight data.
    """
    data_file = data_name = None
    if path is not None and not skeleton:
        path = Path(path)
        if external_data is None:
            external_data = _has_external(graph) or not fits_in_one_protobuf(graph)
        if external_data:
            data_name = path.name + ".data"
            data_file = str(path.with_name(data_name))
    elif not skeleton and not fits_in_one_protobuf(graph):
        raise InvalidModelError(
            "the model's weights exceed 2 GB; export it to a path so they go to external data")
    info = graph.model
    model = onnx.ModelProto(
        ir_version=info.ir_version, producer_name=info.producer_name,
        producer_version=info.producer_version, domain=info.domain,
        model_version=info.model_version, doc_string=info.doc_string)
    writer = _Writer(data_file, data_name or "", size_threshold, skeleton)
    try:
        writer.graph(graph, model.graph)
    finally:
        writer.close()
    for domain, version in graph.opset_imports.items():
        model.opset_import.add(domain=domain, version=version)
    for k, v in info.metadata_props.items():
        model.metadata_props.add(key=k, value=v)
    model.functions.extend(info.functions)
    model.training_info.extend(info.training_info)
    if path is not None and not skeleton:
        tmp = Path(str(path) + ".tmp")
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    return model


def node_to_proto(node: Node) -> onnx.NodeProto:
    """One node as a NodeProto (attribute tensors inlined), e.g. to evaluate it alone."""
    return _Writer(None, "", 1 << 62, False).node(node)
