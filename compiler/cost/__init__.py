"""Cost model: per-node work (FLOPs, bytes) now; roofline, calibration and search later."""

from compiler.cost.flops import graph_flops, node_flops

__all__ = ["graph_flops", "node_flops"]
