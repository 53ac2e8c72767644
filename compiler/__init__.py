"""edgec: compile a neural network for a named edge device.

    from compiler import compile
    art = compile("model.onnx", target="jetson-orin")
    art.config, art.predicted
    art.save("out/orin")

Every `import compiler.<module>` runs this file first, from any layer (passes/ and targets/
import the IR from here). So it imports only the bottom layer eagerly; the driver's API
(`compile`, `optimize`, `prune`, `load_graph`, `Artifact`, `load`) is loaded on first use
(`compiler.lazy`), else importing e.g. `passes.base` on its own would run the driver, which
imports `passes.base` back half-initialized.
"""

from __future__ import annotations

from compiler.errors import CompileError
from compiler.ir import Graph, Node, Tensor, Value
from compiler.lazy import lazy_exports
from compiler.onnx_io import export_onnx, import_onnx
from compiler.version import __version__

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

# public name -> the driver-level module defining it
_LAZY = {"Artifact": "compiler.artifact", "load": "compiler.artifact",
         "compile": "compiler.driver", "load_graph": "compiler.driver",
         "optimize": "compiler.driver", "prune": "compiler.driver"}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
