"""Running a TOSA bundle here, and checking it bit-exact.

`TosaRunner` executes the bundle's segments in order, one batch item at a time (the NPU runs
batch 1): a host segment is an INT8 ONNX sub-model (`host_<i>.onnx`) run by ONNX Runtime, as
the Cortex-M would run it; an NPU segment quantizes its float inputs with each port's scale and
zero point (NCHW -> NHWC), runs `npu_<i>.tosa` in the TOSA reference model and dequantizes its
outputs back. `verify_bit_exact` compares the reference model with edgec's own integer
reference (`tosa_ref.run_program`) on the NPU inputs calibration samples produce and on random
int8 inputs: any differing element is a lowering bug (VerificationError).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from compiler.errors import VerificationError
from targets.base import Runner
from targets.tosa_lower import IntProgram, Port

__all__ = ["TosaRunner", "verify_bit_exact"]


def _port(d: dict[str, Any]) -> Port:
    return Port(d["tensor"], d["onnx"], float(d["scale"]), int(d["zero_point"]),
                d["layout"] == "NHWC", tuple(d["onnx_shape"]))


class TosaRunner(Runner):
    """Host segments in ONNX Runtime, NPU segments in the TOSA reference model."""

    def __init__(self, bundle_dir: str) -> None:
        with open(os.path.join(bundle_dir, "npu.json")) as f:
            self.meta = json.load(f)
        self.dir = bundle_dir
        self.input_names = list(self.meta["input_shapes"])
        self.output_names = list(self.meta["graph_outputs"])
        self.segments = self.meta["segments"]
        self._fb: dict[str, bytes] = {}
        self._sessions: dict[str, Any] = {}

    def _flatbuffer(self, name: str) -> bytes:
        if name not in self._fb:
            with open(os.path.join(self.dir, name), "rb") as f:
                self._fb[name] = f.read()
        return self._fb[name]

    def _session(self, name: str):
        if name not in self._sessions:
            import onnxruntime as ort

            self._sessions[name] = ort.InferenceSession(os.path.join(self.dir, name),
                                                        providers=["CPUExecutionProvider"])
        return self._sessions[name]

    @staticmethod
    def split_batch(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        n = max((np.shape(v)[0] for v in feeds.values() if np.ndim(v)), default=1)
        return [{k: np.asarray(v)[i:i + 1] for k, v in feeds.items()} for i in range(n)]

    def run_one(self, one: dict[str, np.ndarray],
                trace: list[tuple[int, list[np.ndarray]]] | None = None
                ) -> dict[str, np.ndarray]:
        """One batch item; `trace` collects (segment index, NPU int8 inputs)."""
        from targets.tosa_emit import run_reference_model

        env = {k: np.asarray(v, np.float32) for k, v in one.items()}
        for i, seg in enumerate(self.segments):
            if seg["kind"] == "host":
                vals = self._session(seg["file"]).run(
                    seg["outputs"], {k: env[k] for k in seg["inputs"]})
                env.update(zip(seg["outputs"], vals))
                continue
            ins = [_port(p).quantize(env[p["onnx"]]) for p in seg["inputs"]]
            if trace is not None:
                trace.append((i, ins))
            outs = run_reference_model(self._flatbuffer(seg["file"]), ins)
            for p, q in zip(seg["outputs"], outs):
                env[p["onnx"]] = _port(p).dequantize(q)
                for alias in p.get("aliases", ()):
                    env[alias] = env[p["onnx"]]
        return {k: env[k] for k in self.output_names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [self.run_one(one) for one in self.split_batch(feeds)]
        return {k: np.concatenate([r[k] for r in results]) for k in self.output_names}


def verify_bit_exact(out_dir: str, progs: Sequence[IntProgram], samples: Sequence[dict],
                     n_random: int = 4) -> dict[str, Any]:
    """TOSA reference model vs `tosa_ref.run_program` for every NPU segment."""
    from targets.tosa_emit import run_reference_model
    from targets.tosa_ref import run_program

    runner = TosaRunner(out_dir)
    npu = [i for i, s in enumerate(runner.segments) if s["kind"] == "npu"]
    prog_of = dict(zip(npu, progs))
    cases: list[tuple[str, int, list[np.ndarray]]] = []
    for sample in list(samples)[:4]:
        for one in runner.split_batch(sample):
            trace: list[tuple[int, list[np.ndarray]]] = []
            runner.run_one(one, trace)
            cases += [("calibration", i, ins) for i, ins in trace]
    rng = np.random.default_rng(0)
    for i, prog in prog_of.items():
        for _ in range(n_random):
            cases.append(("random", i, [rng.integers(-128, 128, prog.tensors[n].shape)
                                        .astype(np.int8) for n in prog.inputs]))
    worst, elems = 0, 0
    for _what, i, feeds in cases:
        prog = prog_of[i]
        got = run_reference_model(runner._flatbuffer(runner.segments[i]["file"]), feeds)
        ref = run_program(prog, dict(zip(prog.inputs, feeds)))
        for name, g in zip(prog.outputs, got):
            d = np.abs(g.astype(np.int64) - ref[name].astype(np.int64))
            worst, elems = max(worst, int(d.max(initial=0))), elems + d.size
    if worst:
        raise VerificationError(f"the TOSA reference model differs from edgec's integer "
                                f"reference by up to {worst} LSB (a lowering bug)")
    return {"cases": len(cases), "calibration_cases": sum(c[0] == "calibration" for c in cases),
            "npu_segments": len(prog_of), "elements": elems, "max_abs_diff_lsb": worst,
            "compared": "tosa_reference_model vs edgec's numpy integer reference"}
