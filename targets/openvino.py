"""OpenVINO backend: OpenVINO IR (model.xml + model.bin) for Intel CPUs, GPUs and NPUs.

`emit` exports the graph to ONNX, reads it with `openvino.Core().read_model`, fixes the input
shapes for static-shape devices (the Intel NPU compiles static shapes only, so every dynamic dim
must be given through `shapes=`), and writes the IR with `openvino.save_model(...,
compress_to_fp16=False)`; precision is not baked into the weights but requested at compile time
through `ov_config.json` (INFERENCE_PRECISION_HINT f32/f16/bf16, always set; PERFORMANCE_HINT
LATENCY, INFERENCE_NUM_THREADS on the CPU). Q/DQ in the graph (INT8) is read by OpenVINO as is.

`legality` converts the ONNX model op by op (`FrontEnd.convert_partially`: ops without an
OpenVINO conversion rule stay `ONNXFrameworkNode`s) and, for the host CPU, asks the plugin
(`Core.query_model`) which operations it runs. Plugins absent from this machine (NPU, GPU) cannot
be queried; their op coverage is reported as unchecked.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
import onnx

from compiler.errors import (
    CompileError,
    MissingDependencyError,
    RuntimeRefusedError,
    runtime_reason,
)
from compiler.ir import Graph
from compiler.onnx_io import export_onnx
from targets.base import Backend, BuildConfig, LegalityReport, Runner, node_key, register_backend

__all__ = ["OpenVinoBackend", "OpenVinoRunner", "float_hint", "ov_device", "ov_properties"]

_KIND_TO_DEVICE = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
_PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


def _openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("openvino", "openvino", "to compile for Intel devices") \
            from None
    return openvino


def ov_device(profile, config: BuildConfig | None = None) -> str:
    """The OpenVINO device name: options["device"], else the chosen unit's kind, else the main
    unit's; "CPU" for the host."""
    if config is not None and config.option("device"):
        return str(config.option("device")).upper()
    if getattr(profile, "is_host", False):
        return "CPU"
    units = list(getattr(profile, "compute_units", ()))
    want = str(config.option("unit", "")) if config is not None else ""
    unit = next((u for u in units if want and want in (u.name, u.kind)), None)
    unit = unit or (units[0] if units else None)
    return _KIND_TO_DEVICE.get(getattr(unit, "kind", "cpu"), "CPU")


def _needs_static(profile, device: str) -> bool:
    return device == "NPU" or bool(getattr(profile, "static_shapes", False))


def float_hint(graph: Graph | None) -> str:
    """The precision the float layers of an int8 / mixed / int4-weight graph were given: f16 or
    bf16 where a Conv/MatMul/Gemm computes in half, else f32."""
    halfs = {onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.BFLOAT16: "bf16"}
    for n in graph or ():
        if n.op_type in ("Conv", "MatMul", "Gemm") and n.outputs and \
                n.outputs[0].dtype in halfs:
            return halfs[n.outputs[0].dtype]
    return "f32"


def ov_properties(device: str, config: BuildConfig, graph: Graph | None = None
                  ) -> dict[str, Any]:
    """compile_model properties for `device` and the requested precision. The precision hint is
    always set: left unset, the CPU plugin runs float layers in its own default (bf16 on CPUs
    with avx512_bf16), which is not the precision the map was validated at and, on a CPU
    without AMX, measured 1.6x slower than f32 (cnn, ResNet-50 at 112 px, this host). For int8
    / mixed / int4-weight the Q/DQ or compressed weights decide the quantized layers and
    `float_hint(graph)` the rest. `options["runtime_precision"]` ("bf16" / "fp16", one of
    `OpenVinoBackend.runtime_precisions`) asks the plugin to run the float layers in half
    instead: a lossy choice the search makes only when the user accepts a loss."""
    props: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    runtime = config.option("runtime_precision")
    if runtime not in (None, "fp32") and config.precision not in ("fp16", "bf16"):
        props["INFERENCE_PRECISION_HINT"] = _PRECISION_HINT[runtime]  # the search's choice
    else:
        props["INFERENCE_PRECISION_HINT"] = _PRECISION_HINT.get(config.precision) or \
            float_hint(graph)
    threads = config.option("threads")
    if threads and device == "CPU":
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return props


def _dynamic_dims(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, int, Any]]:
    """(input, dim index, dim) for every dim not fixed by the graph or by `shapes`."""
    out = []
    for v in graph.inputs:
        if v.const is not None or v.name in shapes:
            continue
        if v.shape is None:
            out.append((v.name, -1, None))
            continue
        out.extend((v.name, i, d) for i, d in enumerate(v.shape) if not isinstance(d, int))
    return out


def _static_error(name: str, dim: int, value: Any, device: str) -> str:
    what = "has an unknown rank" if dim < 0 else f"dim {dim} ({value!r}) is dynamic"
    return (f"input {name!r} {what}; OpenVINO's {device} compiles static shapes only: pass "
            f"shapes={{'{name}': (...)}} (CLI: --shape {name}=...)")


def _output_owner(graph: Graph) -> dict[str, str]:
    """ONNX value name -> key of the node producing it (as the legality report names nodes)."""
    owner = {}
    for i, node in enumerate(graph):
        for o in node.outputs:
            owner[o.name] = node_key(node, i)
    return owner


def _bind(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of `proto` whose graph inputs have the given static shapes."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for inp in out.graph.input:
        if inp.name in shapes:
            shape = inp.type.tensor_type.shape
            shape.ClearField("dim")
            for d in shapes[inp.name]:
                shape.dim.add().dim_value = int(d)
    return out


def _long_binding(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Every dynamic dim 512, batch dims (named so, or leading a rank > 1 input) 1, one value
    per dim name: what signal and sequence models (an STFT front end) need where
    verification's small sizes fail."""
    value: dict[Any, int] = {}
    for v in graph.inputs:
        for i, d in enumerate(v.shape or ()):
            if isinstance(d, str) and d not in value:
                lead = i == 0 and len(v.shape) > 1
                value[d] = 1 if lead or "batch" in d.lower() else 512
    out = {}
    for v in graph.inputs:
        if v.const is None and v.shape is not None and \
                any(not isinstance(d, int) for d in v.shape):
            out[v.name] = tuple(d if isinstance(d, int) else value.get(d, 1 if i == 0 else 512)
                                for i, d in enumerate(v.shape))
    return out


def _read_error(path: str) -> str:
    """'' when OpenVINO reads (fully converts) the ONNX file, else why not."""
    try:
        _openvino().Core().read_model(path)
    except RuntimeError as e:
        return _ov_error(e)
    return ""


def _ov_error(e: Exception) -> str:
    """The lines of an OpenVINO conversion error that name the failing ops and why."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if ln.startswith("-- ") or "has to be" in ln or
            "Unsupported" in ln or "not supported" in ln]
    return " ".join((keep or lines[-2:])[:4])


def _shape_bound(graph: Graph, proto: onnx.ModelProto, config: BuildConfig | None, tmp: str):
    """(OpenVINO model of a shape-bound copy, how it was bound) or (None, why not).

    The CPU plugin's `query_model` answers for the shapes it is given: on a dynamic-shape
    model it rejects ops (Add, Concat, Unsqueeze in silero-vad) it runs once shapes are known,
    and the ONNX frontend cannot even convert some dynamic graphs (a Conv whose input rank is
    unknown). So the query runs on a copy with every input dim bound: the user's `shapes`,
    then the sizes verification would try, then a long-sequence binding."""
    from compiler.verify import make_inputs

    ov = _openvino()
    given = dict(config.shapes) if config is not None else {}
    if not _dynamic_dims(graph, given):
        bindings = [given] if given else []
    else:
        bindings = []

        def collect(feeds):
            bindings.append({k: tuple(a.shape) for k, a in feeds.items()})
            return False

        make_inputs(graph, shapes=given, accept=collect)
        bindings.append({**_long_binding(graph), **given})
    if not bindings:  # static already: the model itself
        bindings = [{}]
    errors = []
    for i, shapes in enumerate(bindings):
        path = os.path.join(tmp, f"bound{i}.onnx")
        onnx.save(_bind(proto, shapes), path)
        try:
            model = ov.Core().read_model(path)
        except RuntimeError as e:
            errors.append(_ov_error(e))
            continue
        if not shapes:
            return model, "the model's own static shapes"
        dims = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())
        return model, f"a shape-bound copy ({dims})"
    return None, (f"OpenVINO's ONNX frontend converts no shape-bound copy either ({len(bindings)} "
                  f"input sizes tried; {errors[-1] if errors else 'no binding'})")


@register_backend
class OpenVinoBackend(Backend):
    """OpenVINO IR; runs here on the host CPU, on Intel GPU/NPU on the device."""

    name = "openvino"
    extra = "openvino"

    def legality(self, graph: Graph, profile, config: BuildConfig | None = None
                 ) -> LegalityReport:
        ov = _openvino()
        from openvino.frontend import FrontEndManager

        device = ov_device(profile, config)
        report = LegalityReport(self.name, profile.name)
        keys = [node_key(n, i) for i, n in enumerate(graph)]
        by_name = {n.name: k for n, k in zip(graph, keys) if n.name}
        owner = _output_owner(graph)

        def key_of(op) -> str | None:
            if op.get_friendly_name() in by_name:
                return by_name[op.get_friendly_name()]
            for out in op.outputs():
                for name in out.get_names():
                    if name in owner:
                        return owner[name]
            return None

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            export_onnx(graph, path)
            proto = onnx.load(path, load_external_data=False)  # bound copies sit beside it
            fe = FrontEndManager().load_by_framework("onnx")
            input_model = fe.load(path)  # framework nodes point into it: keep it alive
            model = fe.convert_partially(input_model)
            for op in model.get_ops():
                if op.get_type_name() == "ONNXFrameworkNode":
                    attrs = op.get_attributes()
                    domain = attrs.get("ONNX_META_domain") or ""
                    op_type = attrs.get("ONNX_META_type") or op.get_type_name()
                    k = key_of(op) or op.get_friendly_name()
                    report.unsupported[k] = (
                        f"OpenVINO's ONNX frontend has no conversion rule for "
                        f"{domain + '::' if domain else ''}{op_type}")
            if not report.unsupported and device in ov.Core().available_devices:
                bound, how = _shape_bound(graph, proto, config, tmp)
                dyn_err = _read_error(path) if "shape-bound" in how else ""
                if bound is not None and dyn_err:
                    given = config.shapes if config is not None else {}
                    why = (f"OpenVINO's ONNX frontend converts this model only with static "
                           f"input shapes ({dyn_err})")
                    unbound = _dynamic_dims(graph, given)
                    if unbound and config is not None:
                        report.unsupported[f"input:{unbound[0][0]}"] = (
                            f"{why}: pass shapes={{'{unbound[0][0]}': (...)}} (CLI: --shape "
                            f"{unbound[0][0]}=...)")
                    else:  # built static at the given shapes (emit), or shapes come later
                        report.notes.append(f"{why}; the IR is built with static shapes")
                queried, suffix = (bound, "") if bound is not None else (
                    model, f" in the dynamic-shape model, and {how}")
                if bound is None or "shape-bound" in how:
                    report.notes.append(f"{device} plugin queried (Core.query_model) on " + (
                        how if bound is not None else "the dynamic-shape model"))
                supported = ov.Core().query_model(queried, device)
                for op in queried.get_ops():
                    if op.get_type_name() in ("Parameter", "Result", "Constant"):
                        continue
                    k = key_of(op)
                    if op.get_friendly_name() not in supported and k is not None:
                        report.unsupported[k] = (f"the OpenVINO {device} plugin does not "
                                                 f"support {op.get_type_name()}{suffix}")
                del queried, bound
            elif device not in ov.Core().available_devices:
                report.notes.append(f"{device} plugin not available on this machine; op "
                                    "coverage unchecked")
            del model, input_model  # the converted model first: it references the input model
        report.accelerated = [k for k in keys if k not in report.unsupported]
        if _needs_static(profile, device):
            shapes = config.shapes if config is not None else {}
            for name, dim, value in _dynamic_dims(graph, shapes):
                why = _static_error(name, dim, value, device)
                if config is not None:
                    report.unsupported[f"input:{name}"] = why
                else:  # the shapes arrive with the BuildConfig; emit() enforces them
                    report.notes.append(why)
        return report

    def runtime_precisions(self, profile) -> tuple[str, ...]:
        """f32, plus bf16 / f16 where the unit OpenVINO compiles for computes them natively
        (on a CPU without them the plugin converts to f32 and back: slower, not faster)."""
        units = list(getattr(profile, "compute_units", ()))
        kind = {v: k for k, v in _KIND_TO_DEVICE.items()}.get(ov_device(profile), "cpu")
        unit = next((u for u in units if u.kind == kind), units[0] if units else None)
        half = unit.native_half() if unit is not None else ()
        return ("fp32",) + tuple(p for p in ("bf16", "fp16") if p in half)

    def emit(self, graph: Graph, profile, config: BuildConfig, out_dir: str) -> list[str]:
        ov = _openvino()
        device = ov_device(profile, config)
        static = _needs_static(profile, device) or bool(config.option("static_shapes"))
        if static:
            missing = _dynamic_dims(graph, config.shapes)
            if missing:
                raise CompileError(_static_error(*missing[0], device))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            export_onnx(graph, path)
            try:
                model = ov.Core().read_model(path)
            except RuntimeError as e:
                # some dynamic graphs convert only once their input shapes are bound (an If
                # whose output rank depends on a shape): build those static, if shapes are given
                if static or _dynamic_dims(graph, config.shapes) or not config.shapes:
                    raise RuntimeRefusedError(
                        f"OpenVINO cannot read the model: {runtime_reason(e)}") from None
                bound = os.path.join(tmp, "bound.onnx")
                onnx.save(_bind(onnx.load(path, load_external_data=False),
                                dict(config.shapes)), bound)
                try:
                    model, static = ov.Core().read_model(bound), True
                except RuntimeError as e2:
                    raise RuntimeRefusedError(
                        "OpenVINO cannot read the model, dynamic or at the given shapes: "
                        f"{runtime_reason(e2)}") from None
            if static:
                names = {p.get_any_name() for p in model.inputs}
                model.reshape({k: list(v) for k, v in config.shapes.items() if k in names})
                for port in model.inputs:
                    ps = port.get_partial_shape()
                    if not ps.is_static:
                        raise CompileError(_static_error(port.get_any_name(), -1, str(ps),
                                                         device))
            ov.save_model(model, os.path.join(out_dir, "model.xml"), compress_to_fp16=False)
        ov_config = {
            "device": device,
            "properties": ov_properties(device, config, graph),
            "inputs": [v.name for v in graph.inputs if v.const is None],
            "outputs": [v.name for v in graph.outputs],
            "static_shapes": static,
        }
        with open(os.path.join(out_dir, "ov_config.json"), "w") as f:
            json.dump(ov_config, f, indent=2)
        return ["model.xml", "model.bin", "ov_config.json"]

    def build(self, out_dir: str, profile, config: BuildConfig) -> list[str]:
        """Compile once on the host to validate the IR (the device compiles its own blob)."""
        if self.can_run(profile):
            self.load(out_dir, {})
        return []

    def can_run(self, profile) -> bool:
        if not getattr(profile, "is_host", False):
            return False
        try:
            _openvino()
        except MissingDependencyError:
            return False
        return True

    def load(self, bundle_dir: str, manifest: dict[str, Any]) -> Runner:
        with open(os.path.join(bundle_dir, "ov_config.json")) as f:
            cfg = json.load(f)
        return OpenVinoRunner(os.path.join(bundle_dir, "model.xml"), cfg)

    def load_proxy(self, bundle_dir: str, manifest: dict[str, Any]):
        try:
            runner = self.load(bundle_dir, manifest)
        except MissingDependencyError:
            return None
        return runner, ("the emitted OpenVINO IR on this machine's CPU plugin (the device "
                        "plugin compiles the same IR there)")

    def versions(self) -> dict[str, str]:
        return {"openvino": _openvino().__version__}


class OpenVinoRunner(Runner):
    """Compiles model.xml for the host CPU with the bundle's properties; outputs by ONNX name."""

    def __init__(self, xml_path: str, cfg: dict[str, Any]) -> None:
        ov = _openvino()
        core = ov.Core()
        props = dict(cfg.get("properties", {}))
        if cfg.get("device", "CPU") != "CPU":  # a device bundle checked here: CPU properties only
            props.pop("INFERENCE_NUM_THREADS", None)
        try:
            self.compiled = core.compile_model(core.read_model(xml_path), "CPU", props)
        except RuntimeError as e:
            raise RuntimeRefusedError(f"OpenVINO could not compile the model for the CPU: "
                                      f"{runtime_reason(e)}") from None
        # A port can carry several tensor names (OpenVINO merges the names of tensors it folds
        # together, e.g. an input and a no-op Cast of it): match the ONNX names recorded at emit.
        self.input_names, self._in = _match(list(self.compiled.inputs), cfg.get("inputs"))
        self.output_names, self._out = _match(list(self.compiled.outputs), cfg.get("outputs"))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise CompileError(f"missing inputs {missing}; the model takes {self.input_names}")
        # np.require keeps a 0-d scalar 0-d (ascontiguousarray makes it 1-d: OpenVINO refuses)
        result = self.compiled({p: np.require(feeds[n], requirements="C")
                                for n, p in zip(self.input_names, self._in)})
        return {n: np.array(result[p]) for n, p in zip(self.output_names, self._out)}


def _match(ports: list, names: list[str] | None) -> tuple[list[str], list]:
    """(ONNX names, ports in the same order): by tensor name, else by position."""
    if not names or len(names) != len(ports):
        return [p.get_any_name() for p in ports], ports
    found = [next((p for p in ports if n in p.get_names()), None) for n in names]
    return list(names), [f if f is not None else ports[i] for i, f in enumerate(found)]
