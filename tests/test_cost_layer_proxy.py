"""The calibrated cost model as the precision assignment's speed proxy."""

from __future__ import annotations

from compiler.cost.layer_proxy import CostModelProxy
from compiler.precision_api import speed_proxy
from passes.precision import LayerInfo, RooflineProxy
from targets.devices import get_profile
from tests.test_precision_assign import no_vnni_host


def _conv(depthwise: bool, c: int = 64, s: int = 56) -> LayerInfo:
    k = 9 if depthwise else 9 * c
    return LayerInfo("c", "Conv", 0, c * s * s * k, c * k, c * s * s, c * s * s, k, depthwise,
                     False)


def test_host_onnxruntime_uses_its_calibration_and_it_knows_depthwise_int8_loses():
    """Measured on this host's calibration run: ONNX Runtime's int8 depthwise conv is ~4x
    slower than fp32, a 3x3 conv on 64 channels ~2x faster. The proxy read from the stored
    calibration says the same, so the assignment keeps depthwise layers in float."""
    host = get_profile("host")
    proxy = CostModelProxy.for_target(host, "onnxruntime")
    assert proxy is not None and "host/onnxruntime" in proxy.source
    tf, _ = proxy.layer_time(_conv(False), "fp32", host)
    ti, why = proxy.layer_time(_conv(False), "int8", host)
    assert ti < 0.8 * tf and why == ""
    tf, _ = proxy.layer_time(_conv(True), "fp32", host)
    ti, why = proxy.layer_time(_conv(True), "int8", host)
    assert ti > tf and "not faster" in why


def test_uncalibrated_target_keeps_the_roofline_proxy_and_cpu_rules_still_apply():
    assert isinstance(speed_proxy(_graph(), get_profile("rpi5"), "onnxruntime"), RooflineProxy)
    cpu = no_vnni_host()  # no int8 dot product: the kernel rule wins over the fitted numbers
    proxy = CostModelProxy.for_target(cpu, "onnxruntime")
    t, why = proxy.layer_time(_conv(False, c=2), "int8", cpu)  # reduction 18 < 64
    assert t > proxy.layer_time(_conv(False, c=2), "fp32", cpu)[0] and "dot product" in why


def _graph():
    from onnx import TensorProto as T
    from onnx import helper as h

    from compiler.onnx_io import import_onnx

    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1])])
    return import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
