"""edgec: compile a neural network for a named edge device.

    from compiler import compile
    art = compile("model.onnx", target="jetson-orin")
    art.config, art.predicted
    art.save("out/orin")
"""

from __future__ import annotations

__version__ = "0.1.0"

from compiler.artifact import Artifact, load
from compiler.driver import compile, load_graph, optimize
from compiler.errors import CompileError
from compiler.ir import Graph, Node, Tensor, Value
from compiler.onnx_io import export_onnx, import_onnx
from compiler.prune_api import prune

__all__ = [
    "Artifact",
    "CompileError",
    "Graph",
    "Node",
    "Tensor",
    "Value",
    "__version__",
    "compile",
    "export_onnx",
    "import_onnx",
    "load",
    "load_graph",
    "optimize",
    "prune",
]
