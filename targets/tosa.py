"""TOSA backend: Arm Ethos-U55/U65/U85 through TOSA 1.0 INT and Vela.

`legality` checks every compute node of the INT8 Q/DQ graph against the lowering and the
accelerator's limits (`tosa_lower.check`) and cuts the graph: the longest contiguous run of
NPU-legal nodes becomes the NPU part, what comes before or after it runs on the Cortex-M host
(ONNX Runtime on the INT8 ONNX remainder), each with its reason. `allow_fallback=False` turns
any host node into an error. `emit` lowers the NPU part to TOSA (`model.tosa`) and writes the
host parts (`host_pre.onnx`, `host_post.onnx`) and `npu.json` (the ports: which float tensor
is quantized with which scale/zero point and in which layout). `build` checks the TOSA
reference model bit-exact against edgec's own integer reference (`tosa_ref`) on calibration
samples and random int8 inputs, then runs Vela for the profile's accelerator, system config and
memory mode; Vela's estimated cycles and inference time become the prediction, its SRAM and
flash use are checked against the device.

A symbolic batch dim is fixed to 1 (Ethos-U runs batch 1; the runner loops over a batch).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from compiler.errors import CompileError, ConstraintError, VerificationError
from compiler.ir import Graph, Node
from targets import tosa_lower as tl
from targets.base import Backend, BuildConfig, LegalityReport, Runner, node_key, register_backend

__all__ = ["TosaBackend", "TosaRunner", "partition"]

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


def partition(graph: Graph, caps: tl.Caps, shapes: dict) -> tuple[list[Node], dict[str, str]]:
    """(the NPU run, {node key: why it runs on the host}) over the compute nodes. A graph
    without any QuantizeLinear is float (the search asks before lowering): op limits only."""
    nodes = tl.compute_nodes(graph)
    keys = {id(n): node_key(n, i) for i, n in enumerate(graph)}
    quantized = any(n.op_type == "QuantizeLinear" for n in graph)
    why = {id(n): tl.check(n, caps, shapes, quantized) for n in nodes}
    best, start = (0, 0), None
    for i, n in enumerate(nodes + [None]):
        legal = n is not None and why[id(n)] is None
        if legal and start is None:
            start = i
        if not legal and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    run = nodes[best[0]:best[1]]
    host: dict[str, str] = {}
    for i, n in enumerate(nodes):
        if best[0] <= i < best[1]:
            continue
        reason = why[id(n)]
        if reason is None:
            side = "before" if i < best[0] else "after"
            reason = (f"NPU-legal, but {side} the NPU part: edgec offloads one contiguous run "
                      "of NPU-legal ops and this one is cut off by a host op")
        host[keys[id(n)]] = reason
    return run, host


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
        run, host = partition(graph, caps, shapes) if not problems else ([], {})
        return caps, ins, shapes, run, host, problems

    def legality(self, graph: Graph, profile, config: BuildConfig | None = None
                 ) -> LegalityReport:
        report = LegalityReport(self.name, profile.name)
        caps, _, _, run, host, problems = self._plan(graph, profile, config)
        for p in problems:
            report.unsupported[p.split("'")[1] if "'" in p else "input"] = p
        if problems:
            return report
        keys = {id(n): node_key(n, i) for i, n in enumerate(graph)}
        report.accelerated = [keys[id(n)] for n in run]
        if not run:
            first = next(iter(host.items()), ("model", "it has no compute node"))
            report.unsupported[first[0]] = (f"no op can run on the NPU; the first: "
                                            f"{first[1]}")
            return report
        for k, why in host.items():
            report.fallback[k] = f"{_HOST}: {why}"
        report.notes.append(f"{len(run)} ops on the {caps.accelerator} NPU, {len(host)} on the "
                            "host CPU")
        return report

    def emit(self, graph: Graph, profile, config: BuildConfig, out_dir: str) -> list[str]:
        from compiler.onnx_io import export_onnx
        from targets.tosa_emit import serialize

        caps, ins, shapes, run, host, problems = self._plan(graph, profile, config)
        if problems:
            raise CompileError(problems[0])
        if host and not config.allow_fallback:
            k, why = next(iter(host.items()))
            raise CompileError(f"node {k!r} cannot run on the NPU ({why}) and fallback is off")
        if not run:
            raise CompileError(f"no op of the model can run on {profile.name}'s NPU")
        prog = tl.lower(graph, run, caps, shapes)
        with open(os.path.join(out_dir, "model.tosa"), "wb") as f:
            f.write(serialize(prog))
        files = ["model.tosa", "npu.json"]
        model = export_onnx(graph)
        outs = [v.name for v in graph.outputs]
        npu_in = [p.onnx for p in prog.ports_in]
        npu_out = [p.onnx for p in prog.ports_out]
        pre_out = [n for n in npu_in if n not in ins]
        meta: dict[str, Any] = {"accelerator": caps.accelerator, "input_shapes": {
            k: list(v) for k, v in ins.items()}, "inputs": [p.to_dict() for p in prog.ports_in],
            "outputs": [p.to_dict() for p in prog.ports_out], "graph_outputs": outs,
            "tosa_ops": [o.op for o in prog.ops], "host_ops": dict(host)}
        if pre_out:
            onnx_save(_sub_model(model, list(ins), pre_out), out_dir, "host_pre.onnx")
            files.append("host_pre.onnx")
            meta["host_pre"] = {"inputs": list(ins), "outputs": pre_out}
        rest = [o for o in outs if o not in npu_out]
        if rest:
            avail = list(dict.fromkeys(npu_out + list(ins) + pre_out))
            post = _sub_model(model, avail, rest)
            used = {i for n in post.graph.node for i in n.input}
            post_in = [a for a in avail if a in used]
            post = _sub_model(model, post_in, rest)
            onnx_save(post, out_dir, "host_post.onnx")
            files.append("host_post.onnx")
            meta["host_post"] = {"inputs": post_in, "outputs": rest}
        with open(os.path.join(out_dir, "npu.json"), "w") as f:
            json.dump(meta, f, indent=2)
        self._prog = prog  # build() checks this program against the reference model
        return files

    def build(self, out_dir: str, profile, config: BuildConfig) -> list[str]:
        from targets.vela import run_vela

        tc = profile.toolchain
        vela_dir = os.path.join(out_dir, "vela")
        os.makedirs(vela_dir, exist_ok=True)
        res = run_vela(os.path.join(out_dir, "model.tosa"), vela_dir,
                       tc.get("vela_accelerator", profile.name),
                       tc.get("vela_system_config", ""), tc.get("vela_memory_mode", ""),
                       str(config.option("optimise", "Performance")))
        cap_kib = profile.memory_capacity.value / 1024
        if res.sram_kib > cap_kib:
            raise ConstraintError(
                f"the model needs {res.sram_kib:.0f} KiB of SRAM on {profile.name}, which has "
                f"{cap_kib:.0f} KiB; choose a smaller model or input")
        limit = config.option("max_memory_mb")
        if limit is not None and res.sram_kib / 1024 > float(limit):
            raise ConstraintError(
                f"the smallest SRAM footprint Vela reached is {res.sram_kib / 1024:.2f} MB, "
                f"above max_memory_mb={limit}")
        check = verify_bit_exact(out_dir, getattr(self, "_prog", None), config)
        mode = next(m for m in profile.power_modes if m.name == profile.default_power_mode)
        report = {"vela": res.to_dict(), "bit_exact": check,
                  "power_w": {"value": mode.watts.value, "source": mode.watts.source}}
        with open(os.path.join(out_dir, "npu_report.json"), "w") as f:
            json.dump(report, f, indent=2)
        _write_readme(out_dir, profile, res)
        return ["npu_report.json", "README.md"] + [f"vela/{p}" for p in res.files]

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
        return TosaRunner(bundle_dir), ("the TOSA graph in the TOSA reference model (TOSA 1.0 "
                                        "integer semantics) with the host parts in ONNX Runtime")

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        from targets.vela import vela_version

        return {"tosa-tools": version("tosa-tools"), "ethos-u-vela": vela_version()}


def onnx_save(model, out_dir: str, name: str) -> None:
    import onnx

    onnx.save(model, os.path.join(out_dir, name))


def verify_bit_exact(out_dir: str, prog, config: BuildConfig, n_random: int = 4
                     ) -> dict[str, Any]:
    """TOSA reference model vs `tosa_ref.run_program` on calibration samples (through the host
    pre-part) and random int8 inputs: VerificationError on any differing element."""
    from targets.tosa_emit import run_reference_model
    from targets.tosa_ref import run_program

    if prog is None:
        raise CompileError("build() needs the program emit() lowered")
    with open(os.path.join(out_dir, "model.tosa"), "rb") as f:
        fb = f.read()
    runner = TosaRunner(out_dir)
    rng = np.random.default_rng(0)
    cases = []
    for sample in list(config.samples)[:4]:
        for one in runner.split_batch(sample):
            cases.append(("calibration", runner.npu_inputs(one)))
    for _ in range(n_random):
        cases.append(("random", [rng.integers(-128, 128, prog.tensors[n].shape).astype(np.int8)
                                 for n in prog.inputs]))
    worst, elems = 0, 0
    for _what, feeds in cases:
        got = run_reference_model(fb, feeds)
        ref = run_program(prog, dict(zip(prog.inputs, feeds)))
        for name, g in zip(prog.outputs, got):
            d = np.abs(g.astype(np.int64) - ref[name].astype(np.int64))
            worst, elems = max(worst, int(d.max(initial=0))), elems + d.size
    if worst:
        raise VerificationError(f"the TOSA reference model differs from edgec's integer "
                                f"reference by up to {worst} LSB (a lowering bug)")
    return {"cases": len(cases), "calibration_cases": sum(c[0] == "calibration" for c in cases),
            "elements": elems, "max_abs_diff_lsb": worst,
            "compared": "tosa_reference_model vs edgec's numpy integer reference"}


class TosaRunner(Runner):
    """Host pre-part (ORT) -> quantize -> TOSA reference model -> dequantize -> host post-part,
    one batch item at a time (the NPU runs batch 1)."""

    def __init__(self, bundle_dir: str) -> None:
        with open(os.path.join(bundle_dir, "npu.json")) as f:
            self.meta = json.load(f)
        with open(os.path.join(bundle_dir, "model.tosa"), "rb") as f:
            self.fb = f.read()
        self.dir = bundle_dir
        self.input_names = list(self.meta["input_shapes"])
        self.output_names = list(self.meta["graph_outputs"])
        self.ports_in = [_port(p) for p in self.meta["inputs"]]
        self.ports_out = [_port(p) for p in self.meta["outputs"]]
        self._sessions: dict[str, Any] = {}

    def _session(self, name: str):
        if name not in self._sessions:
            import onnxruntime as ort

            self._sessions[name] = ort.InferenceSession(os.path.join(self.dir, name),
                                                        providers=["CPUExecutionProvider"])
        return self._sessions[name]

    def split_batch(self, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        n = max((np.shape(v)[0] for v in feeds.values() if np.ndim(v)), default=1)
        return [{k: np.asarray(v)[i:i + 1] for k, v in feeds.items()} for i in range(n)]

    def _pre(self, one: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = {k: np.asarray(v, np.float32) for k, v in one.items()}
        if "host_pre" in self.meta:
            sess = self._session("host_pre.onnx")
            vals = sess.run(self.meta["host_pre"]["outputs"], env)
            env.update(zip(self.meta["host_pre"]["outputs"], vals))
        return env

    def npu_inputs(self, one: dict[str, np.ndarray]) -> list[np.ndarray]:
        env = self._pre(one)
        return [p.quantize(env[p.onnx]) for p in self.ports_in]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from targets.tosa_emit import run_reference_model

        results: list[dict[str, np.ndarray]] = []
        for one in self.split_batch(feeds):
            env = self._pre(one)
            outs = run_reference_model(self.fb, [p.quantize(env[p.onnx]) for p in self.ports_in])
            for p, q in zip(self.ports_out, outs):
                env[p.onnx] = p.dequantize(q)
            if "host_post" in self.meta:
                m = self.meta["host_post"]
                vals = self._session("host_post.onnx").run(
                    m["outputs"], {k: env[k] for k in m["inputs"]})
                env.update(zip(m["outputs"], vals))
            results.append({k: env[k] for k in self.output_names})
        return {k: np.concatenate([r[k] for r in results]) for k in self.output_names}


def _port(d: dict[str, Any]) -> tl.Port:
    return tl.Port(d["tensor"], d["onnx"], float(d["scale"]), int(d["zero_point"]),
                   d["layout"] == "NHWC", tuple(d["onnx_shape"]))


def _write_readme(out_dir: str, profile, res) -> None:
    tc = profile.toolchain
    text = f"""# edgec bundle: {profile.name} (Arm Ethos-U via TOSA + Vela)

- `model.tosa`: the NPU part as a TOSA 1.0 INT flatbuffer (NHWC, int8).
- `vela/model_vela.npz`: Vela's command stream (`cmd_data`), weights and scratch sizes for
  {tc.get('vela_accelerator')} ({tc.get('vela_system_config')}, {tc.get('vela_memory_mode')}).
- `vela/*_summary_*.csv`: Vela's estimate: {res.cycles} NPU cycles, {res.inference_ms:.3f} ms,
  {res.sram_kib:.1f} KiB SRAM, {res.flash_kib:.1f} KiB flash/DRAM.
- `npu.json`: how the host talks to the NPU: each input is quantized
  `q = clip(round(x / scale) + zero_point, -128, 127)` and transposed NCHW -> NHWC; each output
  is dequantized `(q - zero_point) * scale` (and transposed back). `host_pre.onnx` /
  `host_post.onnx`, when present, hold the ops that run on the Cortex-M (ONNX Runtime or TFLM).

Run on a Corstone-300 (U55/U65) or Corstone-320 (U85) FVP or board: build Arm's
ethos-u-core-software / ExecuTorch Arm runner with the command stream from
`vela/model_vela.npz` (`cmd_data` and the weight/scratch arrays) linked into the firmware,
point the driver's base address at the arena, and run it with
`FVP_Corstone_SSE-300_Ethos-U55 -C ethosu.num_macs=128 -a <firmware.elf>` (U55-128); the NPU
cycle counter (PMU) there is what Vela's estimate predicts. `edgec verify .` checks the files.
"""
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
