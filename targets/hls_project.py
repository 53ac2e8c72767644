"""edgec's dataflow chain -> an hls4ml `ModelGraph` (layer list + configuration dict).

hls4ml builds its model from a list of layer dictionaries in its own (Keras-derived,
channels-last) vocabulary, `ModelGraph.from_layer_list(config, layers)`; its converters
(Keras, PyTorch, ONNX through QONNX) all end there. edgec builds that list itself from
`compiler.fpga_layers` so that every layer gets the exact ap_fixed types, reuse factor and
strategy edgec chose (hls4ml's `LayerName` configuration), and nothing is re-derived by a
converter: the numpy reference (compiler/fixed_sim.py) and the C simulation see the same
weights (already on the weight type's grid), the same layer order and the same types.

Layer names are sanitised to C identifiers (`l<index>_<kind>`); the map back to IR node names
is part of the report.
"""

from __future__ import annotations

from typing import Any

from compiler.fixedpoint import FixedType
from compiler.fpga_layers import FpgaLayer

__all__ = ["HLS_NAMES", "hls_config", "hls_layer_list", "hls_name", "INPUT_NAME"]

INPUT_NAME = "edgec_input"
HLS_NAMES = {"dense": "Dense", "conv2d": "Conv2D", "dwconv2d": "DepthwiseConv2D",
             "relu": "Activation", "maxpool2d": "MaxPooling2D",
             "gap2d": "GlobalAveragePooling2D", "flatten": "Reshape"}


def hls_name(index: int, layer: FpgaLayer) -> str:
    return f"l{index}_{layer.kind}"


def _conv_attrs(layer: FpgaLayer) -> dict[str, Any]:
    (h, w, c), (oh, ow, co) = layer.in_shape, layer.out_shape
    top, bottom, left, right = layer.pads
    return {"data_format": "channels_last", "in_height": h, "in_width": w, "n_chan": c,
            "n_filt": co, "out_height": oh, "out_width": ow,
            "filt_height": layer.kernel[0], "filt_width": layer.kernel[1],
            "stride_height": layer.stride[0], "stride_width": layer.stride[1],
            "pad_top": top, "pad_bottom": bottom, "pad_left": left, "pad_right": right}


def hls_layer_list(layers: list[FpgaLayer]) -> list[dict[str, Any]]:
    """hls4ml layer dictionaries; weights and biases are put on their types' grids first."""
    out: list[dict[str, Any]] = [{"name": INPUT_NAME, "class_name": "InputLayer",
                                  "input_shape": list(layers[0].in_shape)}]
    prev = INPUT_NAME
    for i, layer in enumerate(layers):
        if layer.kind == "flatten" and len(layer.in_shape) == 1:
            continue  # hls4ml's global pooling already yields a flat tensor
        d: dict[str, Any] = {"name": hls_name(i, layer), "class_name": HLS_NAMES[layer.kind],
                             "inputs": [prev]}
        if layer.weight is not None:
            w, b = layer.weight, layer.bias
            if "weight" in layer.types:
                w = layer.types["weight"].quantize(w)
            if "bias" in layer.types:
                b = layer.types["bias"].quantize(b)
            d["weight_data"], d["bias_data"] = w.astype("float64"), b.astype("float64")
            d["weight_quantizer"] = d["bias_quantizer"] = None
        if layer.kind == "dense":
            d.update(n_in=layer.in_shape[0], n_out=layer.out_shape[0])
        elif layer.kind == "conv2d":
            d.update(_conv_attrs(layer))
        elif layer.kind == "dwconv2d":
            d.update(_conv_attrs(layer), depth_multiplier=1)
            d["depthwise_data"] = d.pop("weight_data")
        elif layer.kind == "relu":
            d.update(activation="relu")
        elif layer.kind == "maxpool2d":
            d.update(_conv_attrs(layer), pool_height=layer.kernel[0],
                     pool_width=layer.kernel[1])
            for k in ("n_chan", "filt_height", "filt_width"):
                d.pop(k)
            d["n_filt"] = layer.in_shape[2]
        elif layer.kind == "gap2d":
            d.update(data_format="channels_last", in_height=layer.in_shape[0],
                     in_width=layer.in_shape[1], n_filt=layer.in_shape[2])
        elif layer.kind == "flatten":
            d.update(target_shape=list(layer.out_shape))
        out.append(d)
        prev = d["name"]
    return out


def _precision(layer: FpgaLayer) -> dict[str, str]:
    return {k: t.hls() for k, t in layer.types.items()}


def hls_config(layers: list[FpgaLayer], in_type: FixedType, *, part: str, clock_ns: float,
               io_type: str, reuse: dict[str, int], strategy: dict[str, str],
               out_dir: str, project: str = "edgec_model") -> dict[str, Any]:
    """The hls4ml configuration dict (Vitis backend) with one `LayerName` entry per layer."""
    from hls4ml.utils.config import create_config

    cfg = create_config(output_dir=out_dir, project_name=project, backend="Vitis", part=part,
                        clock_period=clock_ns, io_type=io_type, write_tar=False,
                        write_weights_txt=False)  # weights compiled in: the library moves
    names: dict[str, Any] = {INPUT_NAME: {"Precision": {"result": in_type.hls()}}}
    for i, layer in enumerate(layers):
        entry: dict[str, Any] = {"Precision": _precision(layer)}
        if layer.name in reuse:
            entry["ReuseFactor"] = int(reuse[layer.name])
            entry["Strategy"] = strategy.get(layer.name, "Latency")
        names[hls_name(i, layer)] = entry
    cfg["HLSConfig"] = {"Model": {"Precision": "fixed<16,6>", "ReuseFactor": 1,
                                  "Strategy": "Latency", "BitExact": None},
                        "LayerName": names}
    return cfg
