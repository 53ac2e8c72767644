"""Serializing an `IntProgram` to a TOSA 1.0 flatbuffer with `tosa_serializer` (tosa-tools),
and running it in the TOSA reference model (`tosa_reference_model`).

TOSA 1.0 passes zero points, rescale multipliers/shifts, table contents and reshape targets as
tensors (shape operands as SHAPE constants); attributes keep kernel, stride, pad, axis and
accumulator type. The graph is written as spec 1.0.0 (not the 1.1 draft the serializer
defaults to): Vela 5.x reads TOSA 1.0 PRO-INT.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from compiler.errors import MissingDependencyError, VerificationError

if TYPE_CHECKING:
    from targets.tosa_lower import IntProgram

__all__ = ["run_reference_model", "serialize", "tosa_modules"]


def tosa_modules():
    """(tosa_serializer, tosa_reference_model), or MissingDependencyError naming the extra."""
    os.environ.setdefault("TOSA_MODEL_NO_BACKTRACE", "1")  # fail fast instead of a debugger
    try:
        import tosa_reference_model
        import tosa_serializer
    except ImportError:
        raise MissingDependencyError("tosa-tools", "npu", "to lower to TOSA") from None
    return tosa_serializer, tosa_reference_model


def serialize(prog: IntProgram) -> bytes:
    ts, _ = tosa_modules()
    D = ts.DType  # noqa: N806 - the serializer's enum
    dt = {"int8": D.INT8, "int16": D.INT16, "int32": D.INT32}
    s = ts.TosaSerializer("", targetMajor=1, targetMinor=0, targetPatch=0, targetDraft=False)
    names: dict[str, str] = {}
    for name in prog.inputs:
        t = prog.tensors[name]
        names[name] = s.addPlaceholder(list(t.shape), dt[t.dtype]).name
    for t in prog.tensors.values():
        if t.data is not None:
            names[t.name] = s.addConst(list(t.shape), dt[t.dtype], t.data, t.name).name
    last = {o: i for i, op in enumerate(prog.ops) for o in op.outputs}
    outs = set(prog.outputs)
    for i, op in enumerate(prog.ops):
        ins = [names[x] for x in op.inputs]
        if op.op in ("RESHAPE",):
            shp = np.array(op.attrs["shape"], np.int64)
            ins.append(s.addConst([len(shp)], D.SHAPE, shp, f"shape_{i}").name)
        out = op.outputs[0]
        t = prog.tensors[out]
        if out in outs and last[out] == i:
            names[out] = s.addOutput(list(t.shape), dt[t.dtype]).name
        else:
            names[out] = s.addIntermediate(list(t.shape), dt[t.dtype]).name
        s.addOperator(getattr(ts.Op, op.op), ins, [names[out]], _attribute(ts, op))
    return bytes(s.serialize())


def _attribute(ts, op):
    a, at = ts.TosaSerializerAttribute(), op.attrs
    D = ts.DType  # noqa: N806
    k = op.op
    if k in ("CONV2D", "DEPTHWISE_CONV2D"):
        fn = a.Conv2dAttribute if k == "CONV2D" else a.DepthwiseConv2dAttribute
        fn(at["pad"], at["stride"], at["dilation"], False, D.INT32)
    elif k == "RESCALE":
        a.RescaleAttribute(True, ts.RoundingMode.DOUBLE_ROUND, bool(at["per_channel"]), False,
                           False)
    elif k == "CLAMP":
        a.ClampAttribute(_bytes(at["min"]), _bytes(at["max"]), ts.NanPropagationMode.PROPAGATE)
    elif k == "MAX_POOL2D":
        a.MaxPool2dAttribute(at["kernel"], at["stride"], at["pad"],
                             ts.NanPropagationMode.PROPAGATE)
    elif k == "AVG_POOL2D":
        a.AvgPool2dAttribute(at["kernel"], at["stride"], at["pad"], D.INT32)
    elif k == "CONCAT":
        a.ConcatAttribute(at["axis"])
    elif k == "TRANSPOSE":
        a.TransposeAttribute(at["perms"])
    elif k == "RESHAPE":
        a.ReshapeAttribute()
    elif k == "TABLE":
        a.TableAttribute()
    elif k == "ADD":
        a.AddAttribute()
    elif k == "SUB":
        a.SubAttribute()
    elif k == "MATMUL":
        a.MatMulAttribute()
    else:
        raise NotImplementedError(f"no serializer attribute for TOSA op {k}")
    return a


def _bytes(v: int) -> list[int]:
    return np.array([v], np.int8).view(np.uint8).tolist()


def run_reference_model(flatbuffer: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of the TOSA reference model; VerificationError when it rejects the graph."""
    _, trm = tosa_modules()
    try:
        outs, status = trm.run(flatbuffer, [np.ascontiguousarray(x) for x in inputs])
    except ValueError as e:
        raise VerificationError(f"the TOSA reference model rejected the graph: {e}") from None
    if status != trm.GraphStatus.TOSA_VALID:
        raise VerificationError(f"the TOSA reference model reports {status.name} for the "
                                "lowered graph (a lowering bug: please report it)")
    return [np.asarray(o) for o in outs]
