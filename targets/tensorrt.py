"""TensorRT backend: a strongly typed ONNX graph plus the scripts that build the engine on a Jetson.

TensorRT 11 is strongly typed (no `--fp16/--int8/--best`): each tensor's precision is read from
the graph (Cast, Q/DQ). TensorRT 10.x builds the same graphs with the `STRONGLY_TYPED` network
flag, which 11.x accepts and ignores, so the flag is always set. `emit` writes `model.onnx` (as
given: precision passes already inserted Q/DQ; for fp16/bf16 the whole graph via `to_fp16`),
`build_engine.py` (TensorRT Python API; `build()`/`load()` exec the same source), its settings
`trt_build.json`, `trtexec.sh` and a `README.md`.

`to_fp16` is schema-driven: FP32 tensors bound to an ONNX type parameter that allows the half
type become half; slots typed `tensor(float)` (Resize `scales`), shape arithmetic (values derived
from Shape/Size), ops with subgraphs, custom domains or random outputs, and nodes annotated
`meta["precision"] = "fp32"` stay FP32; a Cast goes wherever producer and consumer types differ.
Constants are converted (clipped to |x| <= 65504), not cast; graph I/O stays FP32.

Legality: the "Y" rows of onnx-tensorrt docs/operators.md (TensorRT 10.15, opsets 9-24). DLA
placement: the profile's DLA op list (NVIDIA/Deep-Learning-Accelerator-SW operators/README.md)
and TensorRT's "DLA Supported Layers and Restrictions": static shapes (min = opt = max), FP16/INT8
tensors, constant MatMul weights; other layers fall back to the GPU (BuilderFlag.GPU_FALLBACK).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from typing import Any

import numpy as np
import onnx

from compiler.errors import CompileError
from compiler.ir import Graph, Node, constant_value, is_constant
from compiler.onnx_io import export_onnx
from passes.fp16 import to_fp16, value_types
from targets.base import Backend, BuildConfig, LegalityReport, Runner, node_key, register_backend

__all__ = ["TensorRtBackend", "TensorRtRunner", "to_fp16", "shape_ranges", "BUILD_SCRIPT",
           "TRT_ONNX_OPS"]

log = logging.getLogger(__name__)
_F32, _F16, _BF16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
_OPS_DOC = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15, opsets 9-24)"
# ONNX ops with "Y" in onnx-tensorrt docs/operators.md (TensorRT 10.15).
TRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape
Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile
TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Ops whose output type comes from an attribute or a random draw: left in FP32 by to_fp16.
_DLA_DOC = ("TensorRT 'DLA Supported Layers and Restrictions'; "
            "NVIDIA/Deep-Learning-Accelerator-SW operators/README.md")


# ---------------------------------------------------------------------------------------------
# whole-graph FP16
def shape_ranges(graph: Graph, config: BuildConfig, static: bool = False
                 ) -> dict[str, dict[str, list[int]]]:
    """min/opt/max for every input with a dynamic dim: `options["shape_ranges"]` first, then
    `config.shapes`; a dynamic batch (dim 0) defaults to 1/opt/`options["max_batch"]`."""
    explicit = dict(config.option("shape_ranges") or {})
    out: dict[str, dict[str, list[int]]] = {}
    for v in graph.inputs:
        if v.const is not None:
            continue
        base = config.shapes.get(v.name)
        if v.shape is None and base is None and v.name not in explicit:
            raise CompileError(f"input {v.name!r} has an unknown rank; pass shapes={{"
                               f"'{v.name}': (...)}} (CLI: --shape {v.name}=...)")
        dims = v.shape if v.shape is not None else tuple(base or explicit[v.name]["opt"])
        if all(isinstance(d, int) for d in dims):
            continue
        if v.name in explicit:
            r = explicit[v.name]
            r = r if isinstance(r, dict) else dict(zip(("min", "opt", "max"), r))
            out[v.name] = {k: [int(d) for d in r[k]] for k in ("min", "opt", "max")}
            continue
        lo, opt, hi = [], [], []
        for i, d in enumerate(dims):
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
            elif base is not None:
                b = int(base[i])
                mx = int(config.option("max_batch") or b) if i == 0 and not static else b
                lo.append(1 if i == 0 and mx > b else b), opt.append(b), hi.append(max(mx, b))
            elif i == 0:
                mx = 1 if static else int(config.option("max_batch") or 1)
                lo.append(1), opt.append(1), hi.append(mx)
            else:
                raise CompileError(
                    f"input {v.name!r} dim {i} ({d!r}) is dynamic; TensorRT needs its range: "
                    f"pass shapes={{'{v.name}': (...)}} (CLI: --shape {v.name}=...) or "
                    f"options={{'shape_ranges': {{'{v.name}': {{'min': .., 'opt': .., "
                    "'max': ..}}}}")
        out[v.name] = {"min": lo, "opt": opt, "max": hi}
    return out


# ---------------------------------------------------------------------------------------------
# the engine script (written into the bundle and exec'd here: one source of truth)
# The engine build/run script is a real module (linted, importable); the bundle gets its text.
_SCRIPT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trt_build_engine.py")
with open(_SCRIPT_PATH) as _f:
    BUILD_SCRIPT = _f.read()


def script_namespace() -> dict[str, Any]:
    """The build script's functions (the module that is copied into bundles)."""
    import targets.trt_build_engine as script

    return vars(script)


def trtexec_command(settings: dict[str, Any]) -> str:
    """The trtexec line equivalent to `build_engine.py` (no precision flags: strongly typed)."""
    args = ["trtexec", "--onnx=model.onnx", "--saveEngine=model.engine", "--stronglyTyped",
            f"--memPoolSize=workspace:{max(int(settings['workspace_bytes']) >> 20, 1)}"]
    ranges = settings.get("shape_ranges", {})
    for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
        if ranges:
            spec = ",".join(f"{_trtexec_name(n)}:{'x'.join(map(str, r[key]))}"
                            for n, r in ranges.items())
            args.append(f"{flag}={spec}")
    if settings.get("dla_core") is not None:
        args += [f"--useDLACore={int(settings['dla_core'])}", "--allowGPUFallback"]
    return " ".join(shlex.quote(a) for a in args)


def _trtexec_name(name: str) -> str:
    return f"'{name}'" if any(c in name for c in ":, ") else name


_README = """# TensorRT bundle ({target})

Engines are specific to one GPU and one TensorRT version, so build it on the device:

    python3 build_engine.py          # or: sh trtexec.sh
    python3 build_engine.py --run    # random inputs; --run inputs.npz for your own

- `model.onnx` is strongly typed{precision}: TensorRT takes every tensor's precision from the
  graph (Cast, Q/DQ). Do not add `--fp16`/`--int8`/`--best`; TensorRT 11 removed them.
- TensorRT 10.x (JetPack 6) needs the `STRONGLY_TYPED` network flag / `--stronglyTyped`, which
  build_engine.py and trtexec.sh set; TensorRT 11 ignores it (always strongly typed).
- Settings (workspace, optimization profile, DLA core) are in `trt_build.json`.{dla}
- Running needs `tensorrt` plus `torch` (CUDA) or `cuda-python` for the GPU buffers.
"""


@register_backend
class TensorRtBackend(Backend):
    """Strongly typed ONNX + engine build scripts for NVIDIA GPUs and Jetson (GPU, DLA)."""

    name = "tensorrt"
    extra = "tensorrt"
    accepted_fused_ops = frozenset({("", "LayerNormalization"), ("", "RMSNormalization"),
                                    ("", "Attention"), ("", "Gelu"), ("", "RotaryEmbedding"),
                                    ("", "GroupNormalization")})

    def legality(self, graph: Graph, profile, config: BuildConfig | None = None
                 ) -> LegalityReport:
        """GPU coverage; with `config.options["dla_core"]` (or unit "dla"), DLA placement."""
        report = LegalityReport(self.name, profile.name)
        reasons: dict[str, int] = {}
        dla = self._dla_unit(profile, config, report)
        types = value_types(graph) if dla is not None else {}
        dla_ops = getattr(dla, "ops", None)  # None: the profile does not restrict the ops
        dynamic = _dynamic_inputs(graph, config)
        if dla is not None and dynamic:
            report.notes.append(
                f"DLA needs static shapes (min = opt = max); {', '.join(dynamic)} are dynamic, "
                "so the network runs on the GPU; pass shapes= to fix them - " + _DLA_DOC)
        for i, node in enumerate(graph.all_nodes()):
            key = node_key(node, i)
            why = _trt_unsupported(node)
            if why:
                report.unsupported[key] = why
            elif dla is None:
                report.accelerated.append(key)
            else:
                why = "dynamic shapes" if dynamic else _dla_fallback(node, dla_ops, types)
                if why:
                    report.fallback[key] = "gpu"
                    reasons[why] = reasons.get(why, 0) + 1
                else:
                    report.accelerated.append(key)
        if reasons:
            top = "; ".join(f"{n} x {why}" for why, n in sorted(reasons.items(),
                                                                key=lambda kv: -kv[1])[:6])
            report.notes.append(f"{len(report.fallback)} nodes run on the GPU instead of the DLA "
                                f"(GPU fallback): {top} - {_DLA_DOC}")
        return report

    @staticmethod
    def _dla_unit(profile, config: BuildConfig | None, report: LegalityReport):
        units = getattr(profile, "compute_units", ())
        dla = next((u for u in units if u.kind == "dla"), None)
        wants = config is not None and (config.option("dla_core") is not None
                                        or str(config.option("unit", "")).lower() == "dla")
        if wants and dla is None:
            report.notes.append(f"{profile.name} has no DLA; the engine runs on the GPU")
        elif dla is not None and not wants:
            report.notes.append("the DLA is unused; pass options={'dla_core': 0} to place "
                                "supported layers on it")
        return dla if wants else None

    def emit(self, graph: Graph, profile, config: BuildConfig, out_dir: str) -> list[str]:
        g = graph
        if config.precision in ("fp16", "bf16"):
            g = to_fp16(graph, dtype=config.precision)
        elif config.precision in ("int8", "int4-weight") and not any(
                n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.all_nodes()):
            log.warning("precision %s asked but the graph holds no Q/DQ nodes; TensorRT will "
                        "build it in FP32 (strongly typed)", config.precision)
        dla_core = config.option("dla_core")
        if dla_core is None and str(config.option("unit", "")).lower() == "dla":
            dla_core = 0
        settings = {
            "precision": config.precision,
            "workspace_bytes": int(config.option("workspace_bytes", 1 << 30)),
            "max_batch": int(config.option("max_batch") or 1),
            "dla_core": dla_core,
            "shape_ranges": shape_ranges(g, config, static=dla_core is not None),
            "target": profile.name,
        }
        export_onnx(g, os.path.join(out_dir, "model.onnx"))
        files = ["model.onnx"]
        if os.path.exists(os.path.join(out_dir, "model.onnx.data")):
            files.append("model.onnx.data")
        dla_txt = (f"\n- DLA core {dla_core} with GPU fallback: check the build log for layers "
                   "placed on the GPU.") if dla_core is not None else ""
        prec = f" ({config.precision})" if config.precision != "fp32" else ""
        texts = {
            "build_engine.py": BUILD_SCRIPT,
            "trt_build.json": json.dumps(settings, indent=2) + "\n",
            "trtexec.sh": "#!/bin/sh\n# Build model.engine with trtexec (equivalent to "
                          "build_engine.py).\nset -e\ncd \"$(dirname \"$0\")\"\n"
                          + trtexec_command(settings) + "\n",
            "README.md": _README.format(target=profile.name, precision=prec, dla=dla_txt),
        }
        for name, text in texts.items():
            with open(os.path.join(out_dir, name), "w") as f:
                f.write(text)
        os.chmod(os.path.join(out_dir, "trtexec.sh"), 0o755)
        return files + list(texts)

    def build(self, out_dir: str, profile, config: BuildConfig) -> list[str]:
        if not self._runnable():
            _note(out_dir, "engine not built here (needs tensorrt and a CUDA GPU); run "
                           "build_engine.py on the device")
            return []
        with open(os.path.join(out_dir, "trt_build.json")) as f:
            settings = json.load(f)
        script_namespace()["build_engine"](os.path.join(out_dir, "model.onnx"),
                                           os.path.join(out_dir, "model.engine"), settings)
        return ["model.engine"]

    @staticmethod
    def _runnable() -> bool:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return False
        return _gpu_present()

    def can_run(self, profile) -> bool:
        return self._runnable()

    def load_proxy(self, bundle_dir: str, manifest: dict[str, Any]):
        from targets.onnxruntime import OrtRunner

        return OrtRunner(os.path.join(bundle_dir, "model.onnx")), (
            "ONNX Runtime (CPU) on the emitted strongly typed model.onnx that TensorRT builds "
            "the engine from; the engine itself is not built here")

    def load(self, bundle_dir: str, manifest: dict[str, Any]) -> Runner:
        path = os.path.join(bundle_dir, "model.engine")
        if not os.path.exists(path):
            raise CompileError(f"{path} does not exist; run build_engine.py in the bundle first")
        return TensorRtRunner(path)

    def versions(self) -> dict[str, str]:
        try:
            import tensorrt
        except ImportError:
            return {}
        return {"tensorrt": tensorrt.__version__}


class TensorRtRunner(Runner):
    """Runs model.engine through the bundle script's EngineRunner."""

    def __init__(self, engine_path: str) -> None:
        try:
            self.engine = script_namespace()["EngineRunner"](engine_path)
        except ImportError as e:
            raise CompileError(f"cannot run the TensorRT engine here: {e}") from None
        except RuntimeError as e:
            raise CompileError(str(e)) from None
        self.input_names = list(self.engine.input_names)
        self.output_names = list(self.engine.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.run(feeds)


def _gpu_present() -> bool:
    if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvhost-ctrl-gpu"):
        return True
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _note(out_dir: str, text: str) -> None:
    path = os.path.join(out_dir, "trt_build.json")
    with open(path) as f:
        settings = json.load(f)
    settings["build_note"] = text
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)
    log.info(text)


def _dynamic_inputs(graph: Graph, config: BuildConfig | None) -> list[str]:
    shapes = config.shapes if config is not None else {}
    return [v.name for v in graph.inputs if v.const is None and v.name not in shapes
            and (v.shape is None or not all(isinstance(d, int) for d in v.shape))]


def _trt_unsupported(node: Node) -> str:
    if node.domain == "trt":
        return ""  # TensorRT plugin namespace: resolved by the plugin registry at build time
    if node.domain and node.domain != "ai.onnx":
        return (f"custom op {node.domain}::{node.op_type} has no TensorRT parser support; "
                "it needs a TensorRT plugin (or use the onnxruntime backend)")
    if node.op_type not in TRT_ONNX_OPS:
        return f"{node.op_type} is not supported by the TensorRT ONNX parser ({_OPS_DOC})"
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.inputs) > 2:
        zp = node.inputs[2]
        if zp is not None and is_constant(zp) and np.any(constant_value(zp) != 0):
            return f"{node.op_type} needs a zero point of 0 in TensorRT ({_OPS_DOC})"
    for v in list(node.inputs) + list(node.outputs):
        if v is not None and v.dtype == onnx.TensorProto.STRING:
            return f"string tensor {v.name!r}: TensorRT has no string type ({_OPS_DOC})"
    return ""


def _dla_fallback(node: Node, dla_ops, types: dict[str, int]) -> str:
    if dla_ops is not None and node.op_type not in dla_ops:
        return f"{node.op_type} is not a DLA op"
    if node.op_type == "MatMul" and len(node.inputs) > 1 and node.inputs[1] is not None \
            and not is_constant(node.inputs[1]):
        return "DLA MatMul needs a constant second input"
    if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
        return ""
    for o in node.outputs:
        t = types.get(o.name, 0)
        if t and t not in (_F16, onnx.TensorProto.INT8):
            return f"{onnx.TensorProto.DataType.Name(t)} output (DLA runs FP16/INT8)"
    return ""
