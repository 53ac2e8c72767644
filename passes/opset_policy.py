"""Opset policy: a precision lowering raises the graph's opset where the ops it emits need it.

Why: the forms precision lowering emits exist only from some ONNX opset on. QuantizeLinear and
DequantizeLinear appear at opset 10, per tensor only; the per-channel `axis` the int8 weights
use (one scale per output channel) at opset 13; a Cast to bfloat16 at opset 13. Emitting them
into an older graph makes a model ONNX Runtime rejects (INVALID_GRAPH) and an opset-9 graph
has no QuantizeLinear at all. So before lowering, a graph below the precision's minimum opset
is converted with `onnx.version_converter` (the converted graph computes the same function:
each adapter rewrites an op into its newer schema), and the lowering then emits opset-13 forms.
Where the converter has no adapter, the lowering is refused with a ConstraintError that says
which opset to export at, rather than emitting a graph no runtime loads.

The bundle's manifest records the opset it ships and, when it differs from the source model's,
why (`describe`).
"""

from __future__ import annotations

import onnx

from compiler.errors import ConstraintError
from compiler.ir import Graph
from compiler.onnx_io import export_onnx, import_onnx

__all__ = ["MIN_OPSET", "required_opset", "raise_opset", "ensure_precision_opset", "describe"]

# precision -> (minimum default-domain opset of the forms it emits, what needs it)
MIN_OPSET: dict[str, tuple[int, str]] = {
    "int8": (13, "per-channel DequantizeLinear (axis) for int8 weights"),
    "mixed": (13, "per-channel DequantizeLinear (axis) for int8 weights"),
    "bf16": (13, "Cast to bfloat16"),
}


def required_opset(precision: str) -> int:
    """The lowest default opset whose ops `precision`'s lowering emits (0: any)."""
    return MIN_OPSET.get(precision, (0, ""))[0]


def raise_opset(graph: Graph, opset: int, why: str) -> bool:
    """Convert `graph` in place to default opset `opset` when it is below; True if converted.

    Raises ConstraintError naming the converter's reason when it cannot convert."""
    have = graph.opset_imports.get("", 0)
    if have >= opset:
        return False
    try:
        model = onnx.version_converter.convert_version(export_onnx(graph), opset)
    except Exception as e:  # the converter raises RuntimeError/IndexError/ValidationError
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConstraintError(
            f"{why} needs ONNX opset {opset}, and onnx.version_converter cannot convert this "
            f"model from opset {have} ({reason}); export the model at opset {opset} or later"
        ) from None
    converted = import_onnx(model, base_dir=graph.model.base_dir)
    ir_version = max(graph.model.ir_version, model.ir_version)
    graph.swap_contents(converted)
    graph.model.ir_version = ir_version
    return True


def ensure_precision_opset(graph: Graph, precision: str) -> bool:
    """Raise `graph`'s opset to what `precision`'s lowering emits; True if it was raised."""
    opset, why = MIN_OPSET.get(precision, (0, ""))
    return raise_opset(graph, opset, f"precision {precision} ({why})") if opset else False


def describe(source_opset: int | None, shipped_opset: int | None, precision: str) -> dict:
    """The manifest's record of the opset a bundle ships and why it differs from the source."""
    out: dict = {"source": source_opset, "shipped": shipped_opset}
    if source_opset is not None and shipped_opset is not None and shipped_opset > source_opset:
        opset, why = MIN_OPSET.get(precision, (shipped_opset, "an op the compiler emitted"))
        out["why"] = (f"raised with onnx.version_converter: {precision} emits {why}, which "
                      f"needs opset {opset}")
    return out
