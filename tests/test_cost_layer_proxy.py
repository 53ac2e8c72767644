"""The calibrated cost model as the precision assignment's speed proxy."""

from __future__ import annotations

from compiler.cost.layer_proxy import CostModelProxy, speed_proxy
from passes.precision import LayerInfo, RooflineProxy
from targets.devices import get_profile
from tests.stand_ins import no_vnni_host, vnni_host


def _conv(depthwise: bool, c: int = 64, s: int = 56) -> LayerInfo:
    k = 9 if depthwise else 9 * c
    return LayerInfo("c", "Conv", 0, c * s * s * k, c * k, c * s * s, c * s * s, k, depthwise,
                     False, s * s)


def test_host_onnxruntime_uses_its_calibration_and_it_knows_depthwise_int8_loses():
    """Measured on the host calibration run: ONNX Runtime's int8 depthwise conv is ~4x slower
    than fp32, a 3x3 conv on 64 channels ~2x faster. The proxy read from the stored calibration
    says the same, so the assignment keeps depthwise layers in float. The host is a fixed VNNI
    stand-in (so the no-dot-product kernel rule does not decide): predictions built from this
    machine's measured peaks would make the verdict depend on the machine."""
    host = vnni_host()
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


def test_conv_layers_carry_their_output_plane_to_the_cost_model():
    """Regression: the proxy's conv kernel had no output plane, so the fitted small-plane
    penalty (spatial_half) never reached the precision assignment. `layer_info` reads the
    plane from the shapes, and the proxy's kernel carries it."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from compiler.onnx_io import import_onnx
    from passes.precision import layer_info

    w = nh.from_array(np.ones((8, 4, 3, 3), np.float32), "w")
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 14, 10])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 8, 14, 10])], [w])
    node = next(iter(import_onnx(h.make_model(g))))
    info = layer_info(node, 0, {"y": (2, 8, 14, 10), "x": (2, 4, 14, 10)})
    assert info.spatial == 14 * 10
    host = get_profile("host")
    ks = CostModelProxy.for_target(host, "onnxruntime").kernels(info, "fp32", host)
    assert ks[0].spatial == 140
