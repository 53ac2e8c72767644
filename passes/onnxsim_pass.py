"""onnxsim as a pass: ONNX Simplifier's constant folding and shape-driven simplification.

The graph is exported in memory (weights inline; models over 2 GB are skipped with a
statistic, since onnxsim works on a single protobuf), simplified with onnxsim's own check that
the result matches the original on random inputs, and re-imported in place. onnxsim may rename
intermediate values; graph input and output names are preserved.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.errors import MissingDependencyError
from compiler.ir import Graph
from compiler.onnx_io import export_onnx, fits_in_one_protobuf, import_onnx
from passes.base import Pass, PassConfig, PassContext, PassResult, register_pass

__all__ = ["OnnxSimplifier"]


@dataclass(frozen=True)
class OnnxsimConfig(PassConfig):
    check_n: int = 1  # random-input checks onnxsim runs on the result
    skip_fuse_bn: bool = False


@register_pass
class OnnxSimplifier(Pass):
    """Run onnxsim on the whole graph."""

    name = "onnxsim"
    Config = OnnxsimConfig

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        try:
            import onnxsim
        except ImportError as e:
            raise MissingDependencyError("onnxsim", "all", "for the onnxsim pass") from e
        if not fits_in_one_protobuf(graph):
            return PassResult(False, {"skipped": "model over 2 GB"})
        before = len(graph)
        model = export_onnx(graph)
        simplified, ok = onnxsim.simplify(model, check_n=self.config.check_n,
                                          skip_fuse_bn=self.config.skip_fuse_bn)
        if not ok:
            return PassResult(False, {"skipped": "onnxsim could not validate its result"})
        if _signature(simplified.graph) == _signature(model.graph):
            return PassResult(False, {"nodes_before": before, "nodes_after": before})
        new = import_onnx(simplified, base_dir=graph.model.base_dir)
        graph.swap_contents(new)
        return PassResult(True, {"nodes_before": before, "nodes_after": len(graph)})


def _signature(gp) -> tuple:
    """What onnxsim may change: the node sequence and the initializer set."""
    return (tuple((n.op_type, tuple(n.input), tuple(n.output)) for n in gp.node),
            tuple(sorted(t.name for t in gp.initializer)))
