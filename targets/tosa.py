"""TOSA backend: Arm Ethos-U55/U65/U85 through TOSA 1.0 INT and Vela.

`legality` checks every compute node of the INT8 Q/DQ graph against the lowering and the
accelerator's limits (`tosa_legality.check`) and cuts the graph into segments in graph order:
runs of NPU-legal nodes go to the NPU, the others to the Cortex-M host (INT8 ONNX run by ONNX
Runtime here), each with its reason. `allow_fallback=False` turns any host node into an error.
`emit` lowers each NPU segment to TOSA (`npu_<i>.tosa`), extracts each host segment
(`host_<i>.onnx`) and writes `npu.json` (segments, ports: which float tensor is quantized with
which scale/zero point and layout). `build` runs Vela per NPU segment for the profile's
accelerator, system config and memory mode, checks SRAM against the device, then the TOSA
reference model bit-exact against edgec's integer reference (`tosa_run`); Vela's cycles and
inference time become the prediction.

A symbolic batch dim is fixed to 1 (Ethos-U runs batch 1; the runner loops over a batch).
"""

from __future__ import annotations

import json
import os
from typing import Any

from compiler.errors import CompileError, ConstraintError
from compiler.ir import Graph, Node
from targets import tosa_lower as tl
from targets.base import Backend, BuildConfig, LegalityReport, node_key, register_backend

__all__ = ["TosaBackend", "partition"]

_HOST = "the Cortex-M host CPU (ONNX Runtime, INT8 ONNX remainder)"


def _input_shapes(graph: Graph, config: BuildConfig | None) -> tuple[dict, list[str]]:
    """Static input shapes (user's, else the model's with a symbolic batch set to 1)."""
    given = dict(config.shapes) if config is not None else {}
    out, problems = {}, []
    for v in graph.inputs:
        if v.const is not None:
            continue
        if v.name in given:
            out[v.name] = tuple(given[v.name])
            continue
        dims = list(v.shape or ())
        if dims and not isinstance(dims[0], int):
            dims[0] = 1
        if v.shape is None or not all(isinstance(d, int) for d in dims):
            problems.append(f"input {v.name!r} has dynamic dims {v.shape}: Vela compiles a "
                            f"fixed command stream; pass shapes={{'{v.name}': (...)}}")
            continue
        out[v.name] = tuple(dims)
    return out, problems


def partition(graph: Graph, caps: tl.Caps, shapes: dict
              ) -> tuple[list[tuple[bool, list[Node]]], dict[str, str]]:
    """(segments in graph order: (on the NPU, compute nodes), {node key: why it runs on the
    host}). Consecutive NPU-legal nodes form one NPU segment, consecutive others one host
    segment. A graph without any QuantizeLinear is float (the search asks before lowering):
    op limits only."""
    nodes = tl.compute_nodes(graph)
    keys = {id(n): node_key(n, i) for i, n in enumerate(graph)}
    quantized = any(n.op_type == "QuantizeLinear" for n in graph)
    why = {id(n): tl.check(n, caps, shapes, quantized) for n in nodes}
    segments: list[tuple[bool, list[Node]]] = []
    for n in nodes:
        legal = why[id(n)] is None
        if segments and segments[-1][0] == legal:
            segments[-1][1].append(n)
        else:
            segments.append((legal, [n]))
    host = {keys[id(n)]: why[id(n)] for n in nodes if why[id(n)] is not None}
    return segments, host


def _readers(v) -> list[Node]:
    """Compute nodes reading `v` directly or through its Q -> DQ."""
    out = []
    for c in v.consumers():
        if c.op_type == "QuantizeLinear":
            for dq in c.outputs[0].consumers():
                out += dq.outputs[0].consumers() if dq.op_type == "DequantizeLinear" else [dq]
        else:
            out.append(c)
    return out


def _host_outputs(nodes: list[Node]) -> list[str]:
    """Values of a host segment read outside it, or graph outputs (also behind Q -> DQ)."""
    inside = {id(n) for n in nodes}
    out: list[str] = []
    for n in nodes:
        for v in n.outputs:
            if v.is_graph_output() or any(id(r) not in inside for r in _readers(v)):
                out.append(v.name)
            for q in v.consumers():
                for dq in q.outputs[0].consumers() if q.op_type == "QuantizeLinear" else ():
                    if dq.outputs[0].is_graph_output():
                        out.append(dq.outputs[0].name)
    return list(dict.fromkeys(out))


def _sub_model(model, inputs: list[str], outputs: list[str]):
    import onnx

    return onnx.utils.Extractor(model).extract_model(inputs, outputs)


@register_backend
class TosaBackend(Backend):
    """TOSA 1.0 INT + Vela for Arm Ethos-U; verified in the TOSA reference model here."""

    name = "tosa"
    extra = "npu"

    @staticmethod
    def _caps(profile) -> tl.Caps:
        return tl.caps_for(profile.toolchain.get("vela_accelerator", profile.name))

    def _plan(self, graph: Graph, profile, config: BuildConfig | None):
        caps = self._caps(profile)
        ins, problems = _input_shapes(graph, config)
        shapes = tl.static_shapes(graph, ins) if not problems else {}
        segs, host = partition(graph, caps, shapes) if not problems else ([], {})
        return caps, ins, shapes, segs, host, problems

    def legality(self, graph: Graph, profile, config: BuildConfig | None = None
                 ) -> LegalityReport:
        report = LegalityReport(self.name, profile.name)
        caps, _, _, segs, host, problems = self._plan(graph, profile, config)
        for p in problems:
            report.unsupported[p.split("'")[1] if "'" in p else "input"] = p
        if problems:
            return report
        keys = {id(n): node_key(n, i) for i, n in enumerate(graph)}
        report.accelerated = [keys[id(n)] for on, ns in segs if on for n in ns]
        if not report.accelerated:
            first = next(iter(host.items()), ("model", "it has no compute node"))
            report.unsupported[first[0]] = (f"no op can run on the NPU; the first: "
                                            f"{first[1]}")
            return report
        for k, why in host.items():
            report.fallback[k] = f"{_HOST}: {why}"
        n_npu = sum(1 for on, _ in segs if on)
        report.notes.append(f"{len(report.accelerated)} ops on the {caps.accelerator} NPU in "
                            f"{n_npu} segment(s), {len(host)} on the host CPU")
        return report

    def emit(self, graph: Graph, profile, config: BuildConfig, out_dir: str) -> list[str]:
        from compiler.onnx_io import export_onnx
        from targets.tosa_emit import serialize

        caps, ins, shapes, segs, host, problems = self._plan(graph, profile, config)
        if problems:
            raise CompileError(problems[0])
        if host and not config.allow_fallback:
            k, why = next(iter(host.items()))
            raise CompileError(f"node {k!r} cannot run on the NPU ({why}) and fallback is off")
        if not any(on for on, _ in segs):
            raise CompileError(f"no op of the model can run on {profile.name}'s NPU")
        model = export_onnx(graph)
        values = {v.name: v for v in graph.values()}
        avail = list(ins)  # float values the host holds so far
        files, progs, seg_meta = ["npu.json"], [], []
        for i, (on_npu, nodes) in enumerate(segs):
            if on_npu:
                prog = tl.lower(graph, nodes, caps, shapes)
                name = f"npu_{i}.tosa"
                with open(os.path.join(out_dir, name), "wb") as f:
                    f.write(serialize(prog))
                outs = []
                for p in prog.ports_out:
                    d = p.to_dict()
                    dq = values[p.onnx].producer
                    q = dq.inputs[0].producer if dq is not None else None
                    d["aliases"] = [q.inputs[0].name] if q is not None else []
                    outs.append(d)
                    avail += [p.onnx] + d["aliases"]
                seg_meta.append({"kind": "npu", "file": name,
                                 "inputs": [p.to_dict() for p in prog.ports_in],
                                 "outputs": outs, "tosa_ops": [o.op for o in prog.ops]})
                progs.append(prog)
            else:
                name = f"host_{i}.onnx"
                outs = _host_outputs(nodes)
                sub = _sub_model(model, avail, outs)
                used = {x for n in sub.graph.node for x in n.input}
                sub_in = [a for a in avail if a in used]
                onnx_save(_sub_model(model, sub_in, outs), out_dir, name)
                seg_meta.append({"kind": "host", "file": name, "inputs": sub_in,
                                 "outputs": outs, "ops": [n.op_type for n in nodes]})
                avail += outs
            files.append(name)
        meta: dict[str, Any] = {"accelerator": caps.accelerator, "input_shapes": {
            k: list(v) for k, v in ins.items()}, "graph_outputs": [v.name for v in graph.outputs],
            "segments": seg_meta, "host_ops": dict(host)}
        with open(os.path.join(out_dir, "npu.json"), "w") as f:
            json.dump(meta, f, indent=2)
        self._progs = progs  # build() checks these programs against the reference model
        return files

    def build(self, out_dir: str, profile, config: BuildConfig) -> list[str]:
        from targets.tosa_run import verify_bit_exact
        from targets.vela import run_vela

        tc = profile.toolchain
        with open(os.path.join(out_dir, "npu.json")) as f:
            segs = [s for s in json.load(f)["segments"] if s["kind"] == "npu"]
        results, files = [], []
        for seg in segs:
            sub = os.path.join("vela", seg["file"].removesuffix(".tosa"))
            os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
            res = run_vela(os.path.join(out_dir, seg["file"]), os.path.join(out_dir, sub),
                           tc.get("vela_accelerator", profile.name),
                           tc.get("vela_system_config", ""), tc.get("vela_memory_mode", ""),
                           str(config.option("optimise", "Performance")))
            results.append(res)
            files += [f"{sub}/{p}" for p in res.files]
        total = _total(results)
        cap_kib = profile.memory_capacity.value / 1024
        if total["sram_kib"] > cap_kib:
            raise ConstraintError(
                f"the model needs {total['sram_kib']:.0f} KiB of SRAM on {profile.name}, which "
                f"has {cap_kib:.0f} KiB (the smallest footprint Vela reached); choose a smaller "
                "model or input")
        check = verify_bit_exact(out_dir, getattr(self, "_progs", []), config.samples)
        mode = next(m for m in profile.power_modes if m.name == profile.default_power_mode)
        report = {"vela": total, "segments": [r.to_dict() for r in results], "bit_exact": check,
                  "power_w": {"value": mode.watts.value, "source": mode.watts.source}}
        with open(os.path.join(out_dir, "npu_report.json"), "w") as f:
            json.dump(report, f, indent=2)
        _write_readme(out_dir, profile, total, len(results))
        return ["npu_report.json", "README.md"] + files

    def predicted(self, out_dir: str) -> dict[str, Any] | None:
        path = os.path.join(out_dir, "npu_report.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            rep = json.load(f)
        v, watts = rep["vela"], rep["power_w"]["value"]
        return {"latency_ms": v["inference_ms"], "npu_cycles": v["cycles"],
                "memory_mb": round((v["sram_kib"] + v["flash_kib"]) / 1024, 4),
                "energy_mj": round(watts * v["inference_ms"], 6),
                "sram_kib": v["sram_kib"], "flash_kib": v["flash_kib"],
                "source": "latency: Vela's estimate (summary CSV) at the system config's core "
                          "clock, host-CPU ops not included; memory: Vela's SRAM + flash/DRAM; "
                          "energy: the power mode's watts x that latency"}

    def load_proxy(self, bundle_dir: str, manifest: dict[str, Any]):
        from targets.tosa_run import TosaRunner

        return TosaRunner(bundle_dir), ("the TOSA graph in the TOSA reference model (TOSA 1.0 "
                                        "integer semantics) with the host parts in ONNX Runtime")

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        from targets.vela import vela_version

        return {"tosa-tools": version("tosa-tools"), "ethos-u-vela": vela_version()}


def onnx_save(model, out_dir: str, name: str) -> None:
    import onnx

    onnx.save(model, os.path.join(out_dir, name))


def _total(results) -> dict[str, Any]:
    """Whole-model numbers from the NPU segments' Vela runs: cycles, time and flash add up,
    SRAM is reused between segments (the largest), operators add up."""
    first = results[0].to_dict()
    return {**first, "cycles": sum(r.cycles for r in results),
            "inference_ms": sum(r.inference_ms for r in results),
            "sram_kib": max(r.sram_kib for r in results),
            "flash_kib": sum(r.flash_kib for r in results),
            "macs": sum(r.macs for r in results), "npu_ops": sum(r.npu_ops for r in results),
            "cpu_ops": sum(r.cpu_ops for r in results), "npu_segments": len(results)}


def _write_readme(out_dir: str, profile, total: dict[str, Any], n_npu: int) -> None:
    tc = profile.toolchain
    text = f"""# edgec bundle: {profile.name} (Arm Ethos-U via TOSA + Vela)

The model runs as segments, in the order `npu.json` lists them ({n_npu} on the NPU):

- `npu_<i>.tosa`: an NPU segment as a TOSA 1.0 INT flatbuffer (NHWC, int8), and
  `vela/npu_<i>/npu_<i>_vela.npz`: Vela's command stream (`cmd_data`), weights and scratch
  sizes for {tc.get('vela_accelerator')} ({tc.get('vela_system_config')},
  {tc.get('vela_memory_mode')}), with Vela's summary CSV beside it.
- `host_<i>.onnx`: ops the NPU cannot run (reasons in `npu.json` `host_ops` and in
  `manifest.json` `legality`), for the Cortex-M (TFLM / ONNX Runtime), INT8 Q/DQ ONNX.
- Between them the host quantizes each NPU input `q = clip(round(x / scale) + zero_point,
  -128, 127)` (NCHW -> NHWC for 4-D tensors) and dequantizes each output
  `(q - zero_point) * scale`; the ports in `npu.json` give scale, zero point and layout.

Vela's estimate for the NPU segments: {total['cycles']} cycles, {total['inference_ms']:.3f} ms,
{total['sram_kib']:.1f} KiB SRAM, {total['flash_kib']:.1f} KiB flash/DRAM (`npu_report.json`).

On a Corstone-300 (U55/U65) or Corstone-320 (U85) FVP or board: link each command stream and
its weights into firmware built on Arm's ethos-u-core-driver (or the ExecuTorch Arm runner),
give the driver the scratch arena, and run e.g.
`FVP_Corstone_SSE-300_Ethos-U55 -C ethosu.num_macs=128 -a <firmware.elf>` (U55-128); the NPU
PMU cycle counter there is what Vela's estimate predicts. `edgec verify .` checks the files.
"""
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
