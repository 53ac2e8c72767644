"""ONNX Runtime backend: the reference runtime and the host default.

Emits `model.onnx` plus `ort_config.json` (graph optimization level, threads, execution
providers). On the host the CPU execution provider runs the bundle here. For Jetson targets the
same files carry the TensorRT and CUDA execution-provider settings a user needs on the device
(engine cache, FP16 only when the graph already holds FP16, since TensorRT 10+/11 reads
precision from the graph), with CPU as the last fallback.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx

from compiler.errors import ConstraintError
from compiler.onnx_io import export_onnx
from targets.base import Backend, BuildConfig, LegalityReport, Runner, node_key, register_backend

__all__ = ["OnnxRuntimeBackend", "OrtRunner", "cpu_kernels", "session_options", "why_not_ort"]

# ONNX Runtime contrib ops edgec's fusion passes may emit (com.microsoft domain). What ONNX
# Runtime accepts is asked of ONNX Runtime itself (`cpu_kernels`), not of this list.
_CONTRIB = frozenset({
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "FastGelu", "BiasGelu",
    "Gelu", "QuickGelu", "FusedConv", "FusedMatMul", "RotaryEmbedding", "BiasAdd",
    "MatMulNBits", "QOrderedMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "QLinearAdd", "QLinearSigmoid", "QLinearConcat", "QLinearGlobalAveragePool",
})
# Ops ONNX Runtime resolves while loading the graph, so no kernel is registered for them.
_RESOLVED_AT_LOAD = frozenset({("", "Constant")})
_LEVELS = {"disable": 0, "basic": 1, "extended": 2, "all": 99}


def optimization_level(value: Any = "all") -> int:
    """ONNX Runtime's graph optimisation level as its number (0 disable, 1 basic, 2 extended,
    99 all) from a name or number; a clear error for anything else. NCHWc layouts and the
    Conv+activation fusions the cost model's "fusion on" assumes come at 99 only."""
    level = _LEVELS.get(value, value) if isinstance(value, str) else value
    if level not in _LEVELS.values():
        raise ConstraintError(f"graph_optimization_level {value!r} is not one of "
                              f"{', '.join(_LEVELS)} (or {sorted(_LEVELS.values())})")
    return int(level)


@functools.lru_cache(maxsize=1)
def cpu_kernels() -> dict[tuple[str, str], tuple[tuple[int, int], ...]]:
    """(domain, op_type) -> the opset ranges ONNX Runtime's CPU execution provider registers a
    kernel for, as the installed onnxruntime itself lists them (every domain it ships:
    ai.onnx, ai.onnx.ml, com.microsoft). Asked once per process (~15 ms)."""
    from onnxruntime.capi import _pybind_state as ort_c

    out: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for k in ort_c.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            domain = "" if k.domain == "ai.onnx" else k.domain
            out.setdefault((domain, k.op_name), set()).add(tuple(k.version_range))
    return {key: tuple(sorted(r)) for key, r in out.items()}


def _onnx_function(domain: str, op_type: str, version: int) -> bool:
    """Whether the ONNX schema defines the op as a function ONNX Runtime expands (e.g. Gelu
    before it had kernels, HardSwish's body): no kernel is needed then."""
    import onnx

    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except Exception:  # no such schema (a custom domain, or an op newer than the opset)
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def why_not_ort(domain: str, op_type: str, version: int | None,
                local_functions: frozenset[tuple[str, str]] = frozenset()) -> str | None:
    """Why ONNX Runtime's CPU provider cannot run the op at this opset; None when it can."""
    import onnxruntime

    domain = "" if domain == "ai.onnx" else domain
    if (domain, op_type) in local_functions or (domain, op_type) in _RESOLVED_AT_LOAD:
        return None  # inlined / turned into an initializer when ONNX Runtime loads the graph
    ranges = cpu_kernels().get((domain, op_type), ())
    v = version if version is not None else (1 << 30 if ranges else 1)
    if any(lo <= v <= hi for lo, hi in ranges) or _onnx_function(domain, op_type, v):
        return None
    name = f"{domain}::{op_type}" if domain else op_type
    if ranges:
        have = ", ".join(f"{lo}-{hi if hi < 1 << 30 else ''}" for lo, hi in ranges)
        return (f"onnxruntime {onnxruntime.__version__} registers CPU kernels for {name} at "
                f"opset versions {have}, not {v}")
    return (f"onnxruntime {onnxruntime.__version__} registers no CPU kernel for {name} (and "
            "ONNX defines no function body for it)")


def _walk(graph: Any) -> Iterator[Any]:
    for node in graph:
        yield node
        for sub in node.subgraphs():
            yield from _walk(sub)


def session_options(config: dict[str, Any]):
    """onnxruntime.SessionOptions from an ort_config.json dict."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        0: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        99: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization_level(config.get("graph_optimization_level", "all"))]
    if config.get("intra_op_num_threads"):
        so.intra_op_num_threads = int(config["intra_op_num_threads"])
    for key, value in (config.get("session_config") or {}).items():
        so.add_session_config_entry(str(key), str(value))
    so.log_severity_level = 3
    return so


# ONNX Runtime's runtime precision options: session config entries, per edgec precision.
# Arm CPUs with BF16 run fp32 MatMul/Gemm through MLAS's bf16 fast-math kernels (lossy).
RUNTIME_SESSION_CONFIG = {"bf16": {"mlas.enable_gemm_fastmath_arm64_bfloat16": "1"}}


class OrtRunner(Runner):
    """Runs an ONNX file with ONNX Runtime's CPU provider."""

    def __init__(self, model_path: str, config: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(
            model_path, sess_options=session_options(config or {}),
            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))


def _providers(profile, config: BuildConfig, bundle: str) -> list[Any]:
    """Execution providers for the device, in priority order."""
    gpu = any(u.kind == "gpu" for u in getattr(profile, "compute_units", ()))
    if getattr(profile, "is_host", False) or not gpu:
        return ["CPUExecutionProvider"]
    trt = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "trt_cache",
        "trt_timing_cache_enable": True,
        "trt_max_workspace_size": int(config.option("workspace_bytes", 2 << 30)),
        "trt_fp16_enable": config.precision == "fp16",
    }
    if config.option("dla_core") is not None:
        trt.update({"trt_dla_enable": True, "trt_dla_core": int(config.option("dla_core"))})
    cuda = {"device_id": 0, "arena_extend_strategy": "kSameAsRequested"}
    return [["TensorrtExecutionProvider", trt], ["CUDAExecutionProvider", cuda],
            "CPUExecutionProvider"]


def _bf16(node) -> bool:
    return any(v is not None and v.dtype == onnx.TensorProto.BFLOAT16
               for v in [*node.inputs, *node.outputs])


def _cpu_has_kernel(node, opset: int) -> bool:
    """Whether ONNX Runtime's CPU provider has a kernel for `node` at its input types: asked
    of ONNX Runtime itself, with a one-node model (answers cached per op and types)."""
    types = tuple(v.dtype if v is not None else 0 for v in node.inputs)
    ranks = tuple(len(v.shape) if v is not None and v.shape is not None else -1
                  for v in node.inputs)
    outs = tuple(v.dtype or 0 for v in node.outputs)
    from compiler.onnx_io import node_to_proto

    proto = node_to_proto(node)
    attrs = tuple(a.SerializeToString() for a in proto.attribute
                  if a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS))
    return _probe(node.domain, node.op_type, types, ranks, outs, attrs, opset)


@functools.cache
def _probe(domain: str, op_type: str, types: tuple, ranks: tuple, outs: tuple, attrs: tuple,
           opset: int) -> bool:
    import onnxruntime as ort
    from onnx import helper

    ins = [f"i{k}" if t else "" for k, t in enumerate(types)]
    node = helper.make_node(op_type, ins, [f"o{k}" for k in range(len(outs))], domain=domain)
    for a in attrs:
        node.attribute.add().ParseFromString(a)
    g = helper.make_graph(
        [node], "probe",
        [helper.make_tensor_value_info(n, t, [1] * r if r >= 0 else None)
         for n, t, r in zip(ins, types, ranks) if n],
        [helper.make_tensor_value_info(f"o{k}", t, None) for k, t in enumerate(outs)])
    imports = [helper.make_opsetid("", opset)]
    if domain not in ("", "ai.onnx"):
        imports.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(g, opset_imports=imports)
    model.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        return "NOT_IMPLEMENTED" not in str(e)  # only a missing kernel is a no
    return True


_RUN_PY = '''"""Run this edgec bundle with ONNX Runtime: python run.py [input.npz]."""
import json, sys, time
import numpy as np
import onnxruntime as ort

cfg = json.load(open("ort_config.json"))
so = ort.SessionOptions()
L = ort.GraphOptimizationLevel
so.graph_optimization_level = {0: L.ORT_DISABLE_ALL, 1: L.ORT_ENABLE_BASIC,
                               2: L.ORT_ENABLE_EXTENDED}.get(cfg["graph_optimization_level"],
                                                             L.ORT_ENABLE_ALL)
if cfg.get("intra_op_num_threads"):
    so.intra_op_num_threads = cfg["intra_op_num_threads"]
for key, value in (cfg.get("session_config") or {}).items():
    so.add_session_config_entry(key, value)
avail = set(ort.get_available_providers())
providers = [p if isinstance(p, str) else tuple(p) for p in cfg["execution_providers"]]
providers = [p for p in providers if (p if isinstance(p, str) else p[0]) in avail]
sess = ort.InferenceSession("model.onnx", so, providers=providers)
feeds = dict(np.load(sys.argv[1])) if len(sys.argv) > 1 else {
    i.name: np.random.rand(*[d if isinstance(d, int) else 1 for d in i.shape]).astype(
        np.float32 if "float" in i.type else np.int64) for i in sess.get_inputs()}
t = time.perf_counter()
outs = sess.run(None, feeds)
print("providers", sess.get_providers(), f"latency {1e3 * (time.perf_counter() - t):.2f} ms")
for o, v in zip(sess.get_outputs(), outs):
    print(o.name, v.shape, v.dtype)
'''


@register_backend
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: CPU here, TensorRT/CUDA execution providers on Jetson."""

    name = "onnxruntime"
    extra = ""
    accepted_fused_ops = frozenset(
        {("com.microsoft", op) for op in _CONTRIB}
        | {("", "LayerNormalization"), ("", "Attention"), ("", "RMSNormalization"),
           ("", "Gelu")})

    def legality(self, graph, profile, config: BuildConfig | None = None) -> LegalityReport:
        report = LegalityReport(self.name, profile.name)
        cpu_only = _providers(profile, config or BuildConfig(), "") == ["CPUExecutionProvider"]
        opset = graph.opset_imports.get("", 17)
        local = frozenset((f.domain, f.name) for f in graph.root.model.functions)
        for i, node in enumerate(_walk(graph)):
            key = node_key(node, i)
            why = why_not_ort(node.domain, node.op_type, node.version, local)
            if why is None and cpu_only and _bf16(node) and not _cpu_has_kernel(node, opset):
                why = (f"ONNX Runtime's CPU provider has no bfloat16 kernel for {node.op_type} "
                       "(it does not insert Casts for bf16 as it does for fp16); use fp16 or "
                       "another backend")
            if why:
                report.unsupported[key] = why
            else:
                report.accelerated.append(key)
        if not getattr(profile, "is_host", False):
            report.notes.append(
                "on the device, nodes the TensorRT execution provider cannot take run on the "
                "CUDA provider, then the CPU; ONNX Runtime decides that when the session starts")
        return report

    def emit(self, graph, profile, config: BuildConfig, out_dir: str) -> list[str]:
        runtime = config.option("runtime_precision")
        if runtime not in (None, "fp32") and runtime not in self.runtime_precisions(profile):
            raise ConstraintError(
                f"ONNX Runtime offers no {runtime} runtime precision on {profile.name}; it "
                f"offers {', '.join(self.runtime_precisions(profile))}")
        export_onnx(graph, os.path.join(out_dir, "model.onnx"))
        ort_config = {
            "graph_optimization_level": optimization_level(
                config.option("graph_optimization_level", "all")),
            "intra_op_num_threads": config.option("threads", 0),
            "execution_providers": _providers(profile, config, out_dir),
        }
        if runtime not in (None, "fp32"):
            ort_config["session_config"] = dict(RUNTIME_SESSION_CONFIG[runtime])
        with open(os.path.join(out_dir, "ort_config.json"), "w") as f:
            json.dump(ort_config, f, indent=2)
        with open(os.path.join(out_dir, "run.py"), "w") as f:
            f.write(_RUN_PY)
        files = ["model.onnx", "ort_config.json", "run.py"]
        if os.path.exists(os.path.join(out_dir, "model.onnx.data")):
            files.append("model.onnx.data")
        return files

    def runtime_precisions(self, profile) -> tuple[str, ...]:
        """fp32, plus bf16 on Arm CPUs with BF16 (MLAS fast-math GEMMs, a session option);
        the CPU provider has no other precision switch (x86 half: see compiler.cost)."""
        unit = profile.main_unit
        half = unit.native_half() if unit.kind == "cpu" and "neon" in unit.isa else ()
        return ("fp32",) + tuple(p for p in RUNTIME_SESSION_CONFIG if p in half)

    def can_run(self, profile) -> bool:
        return bool(getattr(profile, "is_host", False))

    def load(self, bundle_dir: str, manifest: dict[str, Any]) -> Runner:
        with open(os.path.join(bundle_dir, "ort_config.json")) as f:
            cfg = json.load(f)
        return OrtRunner(os.path.join(bundle_dir, "model.onnx"), cfg)

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}
