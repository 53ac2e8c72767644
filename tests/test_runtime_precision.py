"""Runtime precision hints as configuration: what each runtime offers per device (from the
device's ISA, never from the machine running the tests), the accuracy policy (lossy hints only
with an accepted loss), the cost model and the emitted bundle."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from compiler.errors import ConstraintError
from compiler.onnx_io import import_onnx
from compiler.search import search
from compiler.verify import TOLERANCES
from targets.base import BuildConfig, get_backend
from targets.devices import get_profile
from tests.helpers import const, make_model, tensor_info
from tests.stand_ins import AVX2, VNNI, stand_in_host

AMX = VNNI + ("avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
SPR = AMX + ("avx512_fp16",)


def _arm(*extra: str):
    """An Arm CPU stand-in (Arm's ISA vocabulary: neon, dotprod, fp16, bf16, i8mm)."""
    return stand_in_host(("neon", "dotprod", *extra), machine="aarch64",
                         model="test stand-in Arm CPU")


def _mlp(n: int = 512) -> object:
    rng = np.random.default_rng(0)
    nodes = [h.make_node("MatMul", ["x", "w1"], ["a"]), h.make_node("Relu", ["a"], ["r"]),
             h.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = [const(rng.standard_normal((n, n)) / np.sqrt(n), "w1", np.float32),
             const(rng.standard_normal((n, n)) / np.sqrt(n), "w2", np.float32)]
    return make_model(nodes, [tensor_info("x", T.FLOAT, [64, n])],
                      [tensor_info("y", T.FLOAT, [64, n])], inits)


def test_runtimes_offer_half_only_where_the_device_computes_it_natively():
    ov, ort = get_backend("openvino"), get_backend("onnxruntime")
    assert ov.runtime_precisions(stand_in_host(AVX2)) == ("fp32",)
    assert ov.runtime_precisions(stand_in_host(VNNI + ("avx512_bf16",))) == ("fp32", "bf16")
    assert ov.runtime_precisions(stand_in_host(SPR)) == ("fp32", "bf16", "fp16")
    assert ort.runtime_precisions(stand_in_host(SPR)) == ("fp32",)  # no x86 switch in ORT
    assert ort.runtime_precisions(_arm("fp16")) == ("fp32",)
    assert ort.runtime_precisions(_arm("fp16", "bf16", "i8mm")) == ("fp32", "bf16")
    # the profile carries the half peaks the ISA implies, tagged as estimates
    amx = stand_in_host(AMX)
    assert amx.peak("bf16") == pytest.approx(4 * amx.peak("fp32"))
    assert amx.main_unit.peak_ops["bf16"].source.startswith("estimated:")
    assert stand_in_host(AVX2).peak("bf16") == 0.0


def test_search_takes_a_runtime_hint_only_when_a_loss_is_accepted():
    graph, amx = import_onnx(_mlp()), stand_in_host(AMX)
    exact = search(graph, amx, backends=["openvino"], precisions=["fp32"], legality=False)
    assert "runtime_precision" not in exact.choice.config
    lossy = [c for c in exact.pruned if c.config.get("runtime_precision") == "bf16"]
    assert lossy and all(c.pruned.startswith("lossy:") for c in lossy)
    res = search(graph, amx, backends=["openvino"], precisions=["fp32"], legality=False,
                 constraints={"max_accuracy_drop": 0.01})
    assert res.choice.config["runtime_precision"] == "bf16"  # predicted 4x the fp32 peak
    assert any("runtime bf16 hint" in a for a in res.choice.prediction.assumptions)
    f32 = next(c for c in res.candidates if "runtime_precision" not in c.config
               and c.config["fusion"] and c.config["threads"] == 0)
    assert res.choice.prediction.latency_ms < f32.prediction.latency_ms
    # without native bf16 the hint is not even a candidate
    plain = search(graph, stand_in_host(AVX2), backends=["openvino"], precisions=["fp32"],
                   legality=False, constraints={"max_accuracy_drop": 0.01})
    assert not any("runtime_precision" in c.config for c in plain.candidates + plain.pruned)


def test_compile_ships_the_hint_in_the_manifest_and_verifies_at_its_tolerance(
        tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    import targets.host

    amx = stand_in_host(AMX)
    monkeypatch.setattr(targets.host, "detect_host", lambda *a, **k: amx)
    art = compiler.compile(_mlp(), target="host", constraints={"max_accuracy_drop": 0.01},
                           out_dir=tmp_path / "b")
    m = art.manifest
    assert m["backend"] == "openvino" and m["config"]["runtime_precision"] == "bf16"
    ov_cfg = json.loads((tmp_path / "b" / "ov_config.json").read_text())
    assert ov_cfg["properties"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert m["verification"]["passed"] is True
    assert m["verification"]["tolerance"] == dataclasses.asdict(TOLERANCES["bf16"])
    # asked for explicitly on a CPU without it: a clear refusal, nothing written
    monkeypatch.setattr(targets.host, "detect_host", lambda *a, **k: stand_in_host(AVX2))
    with pytest.raises(ConstraintError, match="runtime precision"):
        compiler.compile(_mlp(), target="host", backend="openvino",
                         options={"runtime_precision": "bf16"}, out_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_onnxruntime_arm_bf16_is_a_session_option(tmp_path):
    be, arm = get_backend("onnxruntime"), _arm("fp16", "bf16")
    be.emit(import_onnx(_mlp(16)), arm, BuildConfig(options={"runtime_precision": "bf16"}),
            str(tmp_path))
    cfg = json.loads((tmp_path / "ort_config.json").read_text())
    assert cfg["session_config"] == {"mlas.enable_gemm_fastmath_arm64_bfloat16": "1"}
    from targets.onnxruntime import session_options

    so = session_options(cfg)  # the same entries reach a session (ignored on x86)
    assert so.get_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16") == "1"
    with pytest.raises(ConstraintError, match="no bf16 runtime precision"):
        be.emit(import_onnx(_mlp(16)), get_profile("host"),
                BuildConfig(options={"runtime_precision": "bf16"}), str(tmp_path / "x86"))
