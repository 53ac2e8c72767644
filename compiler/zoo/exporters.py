"""Exporter variants of zoo models: the same architecture as other exporters write it.

edgec's own zoo exports SigLIP with eager attention and the TorchScript exporter. Users' models
come from elsewhere: transformers 5 defaults to `attn_implementation="sdpa"`, which
`torch.onnx.export(..., dynamo=False)` writes as symbolic_opset14's scaled_dot_product_attention
(√scale multiplied into Q and into Kᵀ separately) and the dynamo exporter as torchlib's
decomposition (opset 18). The fusion passes must recognise both; these builders give the tests
and benchmarks the real graphs (random weights, transformers' SiglipVisionConfig defaults).

They are zoo models outside `compiler.zoo.NAMES` (built on request, cached like the others):
`siglip_sdpa_torchscript` and `siglip_sdpa_dynamo`, both `pixel_values` [2, 3, 224, 224] ->
`last_hidden_state` [2, 196, 768], `pooler_output` [2, 768] (batch fixed at 2: the dynamo
exporter's dynamic batch adds shape arithmetic that is not what this variant is for).
"""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["BATCH", "build_siglip_sdpa_dynamo", "build_siglip_sdpa_torchscript"]

BATCH = 2
_OUTS = ["last_hidden_state", "pooler_output"]


def _sdpa_siglip():
    from compiler.zoo.builders import siglip_torch_module

    model = siglip_torch_module()  # seeded random weights, eager attention
    model.inner.config._attn_implementation = "sdpa"  # transformers 5's default
    return model


def _finish(raw: Path, out: Path, doc: str) -> Path:
    import onnx

    model = onnx.load(str(raw))  # external data, if the exporter wrote any, is read in here
    model.doc_string = doc
    model.producer_name = "edgec.zoo"
    onnx.save_model(model, str(out))
    for p in raw.parent.iterdir():
        if p != out:
            p.unlink()
    return out


def _build(out_dir: Path, dynamo: bool) -> Path:
    import torch

    from compiler.zoo.builders import OPSET

    model = _sdpa_siglip()
    raw = out_dir / "raw.onnx"
    x = torch.randn(BATCH, 3, 224, 224)
    names = {"input_names": ["pixel_values"], "output_names": _OUTS}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:  # torch's default opset for it (>= 18)
            torch.onnx.export(model, (x,), dynamo=True, verbose=False, **names).save(str(raw))
        else:
            torch.onnx.export(model, (x,), str(raw), dynamo=False, opset_version=OPSET, **names)
    how = "dynamo" if dynamo else "TorchScript"
    return _finish(raw, out_dir / "model.onnx", f"edgec zoo siglip_sdpa_{how.lower()}: SigLIP-B/16 "
                   f"vision encoder, sdpa attention, torch.onnx {how} exporter")


def build_siglip_sdpa_torchscript(out_dir: Path) -> Path:
    return _build(out_dir, dynamo=False)


def build_siglip_sdpa_dynamo(out_dir: Path) -> Path:
    return _build(out_dir, dynamo=True)
