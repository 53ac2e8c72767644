"""hls4ml backend: a Vitis HLS dataflow design for AMD FPGAs (Kria KV260), C-simulated here.

Route: edgec's own layer chain -> hls4ml's Python API (`ModelGraph.from_layer_list`), not
ONNX -> QONNX -> `convert_from_onnx_model`. Why:
- precision is edgec's: the fixed-point policy (passes/fixed_point.py) gives every tensor its
  own ap_fixed type, and hls4ml's per-layer `LayerName` configuration takes those types as
  they are. The QONNX route expresses precision as `Quant` nodes (scale, zero-point, bit
  width), from which hls4ml re-derives the ap_fixed types and accumulators itself: edgec could
  no longer state, nor check bit for bit, what the hardware computes;
- one layer chain (compiler/fpga_layers.py, channels-last) feeds the policy, the exact numpy
  reference, the resource model and the project, so all four agree by construction; the
  QONNX route would add the qonnx package (cleanup, channels-last conversion, Gemm->MatMul)
  and a second reading of the graph;
- it needs hls4ml alone (no TensorFlow, no qonnx): numpy, h5py, pyyaml.

emit: the layer chain with its types from the graph, reuse factors from the resource search
(compiler/cost/fpga.py) or the user (`options["reuse_factor"]`: an int or {node: int}),
strategy Latency at R = 1 else Resource, io_parallel for MLPs, io_stream when the chain has a
convolution (`options["io_type"]` overrides), the profile's part and clock; hls4ml writes
the project (firmware, weights, build tcl) into `hls_prj/`. build: `ModelGraph.compile()`
builds the C-simulation library with g++ and edgec checks it bit for bit against the exact
fixed-point reference (compiler/fixed_sim.py) on inputs spread over the input type's range;
a mismatch is a VerificationError. The library runs through ctypes (`HlsRunner`), so loading
a bundle needs neither hls4ml nor g++.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from typing import Any

import numpy as np

from compiler.cost.fpga import KV260_RESOURCES, search_reuse, strategy_for
from compiler.errors import (
    CompileError,
    MissingDependencyError,
    UnsupportedOpError,
    VerificationError,
)
from compiler.fixed_sim import simulate
from compiler.fpga_layers import (
    WEIGHT_KINDS,
    from_channels_last,
    input_type,
    layers_from_graph,
    to_channels_last,
)
from compiler.ir import Graph
from targets.base import Backend, BuildConfig, LegalityReport, Runner, node_key, register_backend
from targets.hls_bundle import build_script, readme
from targets.hls_project import hls_config, hls_layer_list, hls_name

__all__ = ["HlsBackend", "HlsRunner", "REPORT"]

PROJECT = "edgec_model"
REPORT = "hls_report.json"
CSIM_DIR = "csim"
CHECK_SAMPLES = 32


def _hls4ml():
    try:
        import hls4ml
    except ImportError:
        raise MissingDependencyError("hls4ml", "fpga", "to build FPGA designs") from None
    return hls4ml


def _walk(root: str) -> list[str]:
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(out)


@register_backend
class HlsBackend(Backend):
    """hls4ml 1.3 (Vitis backend); the C simulation runs on this machine."""

    name = "hls"
    extra = "fpga"

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}

    def legality(self, graph: Graph, profile, config: BuildConfig | None = None
                 ) -> LegalityReport:
        report = LegalityReport(self.name, profile.name)
        keys = [node_key(n, i) for i, n in enumerate(graph)]
        try:
            layers_from_graph(graph)
        except UnsupportedOpError as e:
            bad = next((k for n, k in zip(graph, keys) if n.name and repr(n.name) in str(e)),
                       "graph")
            report.unsupported[bad] = str(e)
        report.accelerated = [k for k in keys if k not in report.unsupported]
        if not report.unsupported and input_type(graph) is None:
            report.notes.append("no fixed-point types yet: compile with precision='fixed'")
        return report

    def emit(self, graph: Graph, profile, config: BuildConfig, out_dir: str) -> list[str]:
        hls4ml = _hls4ml()
        layers = layers_from_graph(graph)
        in_t = input_type(graph)
        if in_t is None or any(not layer.types for layer in layers):
            raise CompileError("the graph has no fixed-point types: compile for the FPGA with "
                               "precision='fixed' and calibration data")
        tool = dict(getattr(profile, "toolchain", {}) or {})
        part = str(config.option("part", tool.get("part", "xck26-sfvc784-2LV-c")))
        clock = float(config.option("clock_period_ns", tool.get("clock_period_ns", 5)))
        conv = any(layer.kind in ("conv2d", "dwconv2d") for layer in layers)
        io_type = str(config.option("io_type", "io_stream" if conv else "io_parallel"))
        user_rf = config.option("reuse_factor")
        weighted = [layer.name for layer in layers if layer.kind in WEIGHT_KINDS]
        fixed = ({n: int(user_rf) for n in weighted} if isinstance(user_rf, int) else
                 {str(k): int(v) for k, v in (user_rf or {}).items()})
        limits = dict(KV260_RESOURCES)  # the one FPGA profile; its K26 fabric
        reuse, fp = search_reuse(layers, io_type=io_type, in_bits=in_t.width, clock_ns=clock,
                                 limits=limits, fixed=fixed, device=profile.name,
                                 utilization=float(config.option("max_utilization", 1.0)))
        strategy = {n: strategy_for(r) for n, r in reuse.items()}
        prj = os.path.join(out_dir, "hls_prj")
        cfg = hls_config(layers, in_t, part=part, clock_ns=clock, io_type=io_type,
                         reuse=reuse, strategy=strategy, out_dir=prj, project=PROJECT)
        model = hls4ml.model.graph.ModelGraph.from_layer_list(cfg, hls_layer_list(layers))
        got = {ly.name: int(ly.get_attr("reuse_factor")) for ly in model.get_layers()}
        for i, layer in enumerate(layers):
            hn = hls_name(i, layer)
            if layer.name in reuse and hn in got and got[hn] != reuse[layer.name]:
                raise CompileError(f"hls4ml changed layer {layer.name!r}'s reuse factor "
                                   f"{reuse[layer.name]} to {got[hn]}")
        model.write()
        self._models[os.path.abspath(out_dir)] = (model, layers, in_t)
        report = {
            "device": profile.name, "part": part, "clock_ns": clock, "io_type": io_type,
            "project": PROJECT, "hls4ml": hls4ml.__version__,
            "input_type": in_t.hls(), "input_shape": list(layers[0].in_shape),
            "output_shape": list(layers[-1].out_shape),
            "layers": {layer.name: {"hls_name": hls_name(i, layer), "kind": layer.kind,
                                    **{k: t.hls() for k, t in layer.types.items()},
                                    **fp.layers[i].to_dict()}
                       for i, layer in enumerate(layers)},
            "estimate": fp.summary(limits), "reuse_search": "user" if fixed else
            "searched: lowest predicted latency within the device's resources",
            "csim_library": None, "csim_check": None,
        }
        with open(os.path.join(out_dir, "build.sh"), "w") as f:
            f.write(build_script(PROJECT, part))
        os.chmod(os.path.join(out_dir, "build.sh"), 0o755)
        self._write_report(out_dir, report)
        return [os.path.join("hls_prj", p) for p in _walk(prj)] + ["build.sh", REPORT,
                                                                     "README.md"]

    @staticmethod
    def _write_report(out_dir: str, report: dict[str, Any]) -> None:
        with open(os.path.join(out_dir, REPORT), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(out_dir, "README.md"), "w") as f:
            f.write(readme({**report, "csim_library": report["csim_library"] or
                            f"{CSIM_DIR}/lib{PROJECT}.so (after the host build)"}))

    def build(self, out_dir: str, profile, config: BuildConfig) -> list[str]:
        """g++ the C simulation, then check it bit for bit against the exact reference."""
        key = os.path.abspath(out_dir)
        if key not in self._models or shutil.which("g++") is None:
            return []
        model, layers, in_t = self._models.pop(key)
        model.compile()
        firmware = os.path.join(out_dir, "hls_prj", "firmware")
        built = [f for f in os.listdir(firmware) if f.endswith(".so")]
        os.makedirs(os.path.join(out_dir, CSIM_DIR), exist_ok=True)
        lib = os.path.join(CSIM_DIR, f"lib{PROJECT}.so")
        shutil.move(os.path.join(firmware, built[0]), os.path.join(out_dir, lib))
        with open(os.path.join(out_dir, REPORT)) as f:
            report = json.load(f)
        report["csim_library"] = lib
        runner = HlsRunner(out_dir, report)
        rng = np.random.default_rng(0)
        lo, hi = in_t.lo * 2.0 ** -in_t.frac, in_t.max_value
        shape = (CHECK_SAMPLES, *_onnx_shape(layers[0].in_shape))
        x = rng.uniform(lo, hi, size=shape).astype(np.float32)
        got = runner.predict(x)
        ref = simulate(layers, in_t, x)
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        report["csim_check"] = {"samples": CHECK_SAMPLES, "inputs": f"uniform over the input "
                                f"type's range [{lo:g}, {hi:g}], seed 0",
                                "equal": bool(diff == 0.0), "max_abs_diff": diff}
        self._write_report(out_dir, report)
        if diff != 0.0:
            raise VerificationError(f"hls4ml's C simulation differs from edgec's fixed-point "
                                    f"reference by up to {diff:g}; the types were not applied "
                                    "as assigned")
        return [lib]

    def can_run(self, profile) -> bool:
        if shutil.which("g++") is None:
            return False
        try:
            _hls4ml()
        except MissingDependencyError:
            return False
        return True

    def load(self, bundle_dir: str, manifest: dict[str, Any]) -> Runner:
        with open(os.path.join(bundle_dir, REPORT)) as f:
            report = json.load(f)
        if not report.get("csim_library"):
            raise CompileError("this bundle has no C-simulation library (g++ or hls4ml was "
                               "missing when it was built)")
        graph_io = (manifest.get("source") or {})
        return HlsRunner(bundle_dir, report, graph_io.get("inputs"), graph_io.get("outputs"))

    def manifest_entries(self, out_dir: str) -> dict[str, Any]:
        with open(os.path.join(out_dir, REPORT)) as f:
            return {"hls": json.load(f)}

    def versions(self) -> dict[str, str]:
        return {"hls4ml": _hls4ml().__version__}


def _onnx_shape(cl_shape) -> tuple[int, ...]:
    return (cl_shape[2], cl_shape[0], cl_shape[1]) if len(cl_shape) == 3 else tuple(cl_shape)


class HlsRunner(Runner):
    """The bundle's C-simulation library through ctypes (`<project>_double`, one sample per
    call, channels-last), in ONNX layout on both sides."""

    def __init__(self, bundle_dir: str, report: dict[str, Any], inputs=None, outputs=None):
        self.lib = ctypes.cdll.LoadLibrary(os.path.abspath(
            os.path.join(bundle_dir, report["csim_library"])))
        self.fn = getattr(self.lib, f"{report['project']}_double")
        self.in_shape = tuple(report["input_shape"])
        self.out_shape = tuple(report["output_shape"])
        self.input_names = [i["name"] for i in inputs or []] or ["input"]
        self.output_names = [o["name"] for o in outputs or []] or ["output"]
        ptr = np.ctypeslib.ndpointer(dtype=np.float64, flags="C_CONTIGUOUS")
        self.fn.argtypes = [ptr, ptr]
        self.fn.restype = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = to_channels_last(np.asarray(x))
        xs = np.ascontiguousarray(x.reshape(x.shape[0], -1), np.float64)
        n_out = int(np.prod(self.out_shape))
        out = np.zeros((xs.shape[0], n_out), np.float64)
        for i in range(xs.shape[0]):
            row = np.ascontiguousarray(xs[i])
            res = np.zeros(n_out, np.float64)
            self.fn(row, res)
            out[i] = res
        return from_channels_last(out, self.out_shape).astype(np.float32)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.input_names[0]
        if name not in feeds:
            raise CompileError(f"missing input {name!r}; the model takes {self.input_names}")
        return {self.output_names[0]: self.predict(feeds[name])}
