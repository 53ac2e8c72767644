"""Device profiles: every number sourced, names resolve, units as specified, host measured."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import targets.host as host
from compiler.errors import CompileError, UnknownTargetError
from targets.devices import (
    PROFILE_NAMES,
    format_table,
    get_profile,
    list_profiles,
    unverified_sources,
)
from targets.profile import (
    BACKENDS,
    PRECISIONS,
    SOURCE_TAGS,
    ComputeUnit,
    DeviceProfile,
    PowerMode,
    Sourced,
)

pytestmark = pytest.mark.live_host  # detection itself: the real host, not the stand-in

STATIC = [n for n in PROFILE_NAMES if n != "host"]


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """All profiles, with the host measured into a temporary HOME (not the user's cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        mp.setattr(host, "_MEMO", {})
        yield list_profiles()


def test_profile_names_and_order(profiles):
    assert [p.name for p in profiles] == list(PROFILE_NAMES)
    assert profiles[0].is_host and not any(p.is_host for p in profiles[1:])
    assert set(STATIC) == {
        "jetson-orin-nano", "jetson-orin-nx", "jetson-orin-agx", "raspberry-pi-5",
        "intel-core-ultra", "ethos-u55-128", "ethos-u65-256", "ethos-u85-256", "kria-kv260"}


def test_every_number_has_a_tagged_source(profiles):
    for p in profiles:
        values = list(p.sourced_values())
        assert values, p.name
        for path, s in values:
            assert isinstance(s, Sourced)
            assert s.source.strip(), f"{p.name}.{path} has no source"
            assert s.source.startswith(SOURCE_TAGS), f"{p.name}.{path}: {s.source!r}"
            assert math.isfinite(s.value) and s.value > 0, f"{p.name}.{path} = {s.value}"


def test_profiles_are_consistent(profiles):
    for p in profiles:
        assert p.backends and set(p.backends) <= set(BACKENDS)
        assert p.precisions and set(p.precisions) <= set(PRECISIONS)
        assert p.power().name == p.default_power_mode
        assert p.main_unit is p.compute_units[0]
        assert max(p.peak(x) for x in ("fp32", "fp16", "int8")) > 0, p.name
        assert any(u.peak_ops for u in p.compute_units), p.name
        if p.static_shapes:
            assert all(u.static_shapes for u in p.compute_units), p.name


def test_names_and_aliases_resolve():
    for name in STATIC:
        p = get_profile(name)
        assert p.name == name
        assert get_profile(name.upper()) is p
        assert get_profile(name.replace("-", "_")) is p
        assert get_profile(p) is p
        for alias in p.aliases:
            assert get_profile(alias) is p


def test_jetson_orin_alias_is_agx():
    assert get_profile("jetson-orin") is get_profile("jetson-orin-agx")
    assert get_profile(" Jetson-Orin ") is get_profile("jetson-orin-agx")


def test_unknown_target_suggests_close_match():
    with pytest.raises(UnknownTargetError, match="jetson-orin-nano") as err:
        get_profile("jetson-orin-nan")
    assert isinstance(err.value, CompileError)
    assert "did you mean" in str(err.value)
    for name in PROFILE_NAMES:  # the message lists every known target
        assert name in str(err.value)
    with pytest.raises(UnknownTargetError, match="known targets") as err:
        get_profile("zzzz")
    assert "did you mean" not in str(err.value)


def test_jetson_units():
    nano, nx, agx = (get_profile(f"jetson-orin-{n}") for n in ("nano", "nx", "agx"))
    assert nano.unit("dla") is None
    assert nx.unit("dla").count == 2 and agx.unit("dla").count == 2
    for p in (nano, nx, agx):
        assert p.backends == ("tensorrt", "onnxruntime", "tvm")
        gpu, cpu = p.unit("gpu"), p.unit("cpu")
        assert p.main_unit is gpu and gpu.cuda_arch == "sm_87"
        assert dict(cpu.llvm) == {"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78ae"}
        assert cpu.kind == "cpu" and cpu.cores in (6, 8, 12)
    assert agx.unit("dla").ops is not None and "Conv" in agx.unit("dla").ops
    assert "LayerNormalization" not in agx.unit("dla").ops


def test_agx_dense_int8_is_half_the_sparse_headline():
    agx = get_profile("jetson-orin-agx")
    for mode, sparse_total in (("MAXN", 275), ("50W", 200), ("30W", 131), ("15W", 54)):
        dense = agx.peak("int8", "gpu", mode) + agx.peak("int8", "dla", mode)
        assert dense == pytest.approx(sparse_total / 2 * 1e12, rel=0.01), mode
    assert agx.peak("int8") == pytest.approx(171e12 / 2)  # main unit, default mode (MAXN)
    assert agx.peak("int8", "all") > agx.peak("int8", "gpu") + agx.peak("int8", "dla")
    assert agx.peak("fp16", "dla") == 0.0  # no published number
    assert agx.peak("int4-weight") == agx.peak("fp16")


def test_power_modes():
    agx = get_profile("jetson-orin-agx")
    assert agx.power().name == "MAXN" and agx.power().watts.value == 60
    assert agx.power("maxn") is agx.power("MAXN")
    assert [m.name for m in agx.power_modes] == ["MAXN", "50W", "30W", "15W"]
    assert [m.name for m in get_profile("jetson-orin-nx").power_modes] == ["25W", "15W", "10W"]
    nano = get_profile("jetson-orin-nano")
    assert {m.name for m in nano.power_modes} == {"25W", "15W", "7W"}
    assert nano.bandwidth("25W") == pytest.approx(102e9)
    assert nano.bandwidth("15W") == pytest.approx(68e9)
    with pytest.raises(UnknownTargetError, match="power mode"):
        agx.power("1000W")


def test_raspberry_pi_and_intel():
    rpi = get_profile("raspberry-pi-5")
    assert rpi.backends == ("tvm", "onnxruntime")
    assert rpi.main_unit.llvm["mcpu"] == "cortex-a76"
    assert rpi.peak("fp32") == pytest.approx(4 * 2.4e9 * 16)
    assert "derived" in rpi.main_unit.peak_ops["fp32"].source
    mtl = get_profile("intel-core-ultra")
    assert mtl.backends == ("openvino", "onnxruntime", "tvm")
    assert {u.name for u in mtl.compute_units} == {"cpu", "igpu", "npu"}
    assert mtl.unit("npu").static_shapes and not mtl.static_shapes
    assert not mtl.unit("cpu").static_shapes
    assert any("npu" in c and "static" in c for c in mtl.constraints)


def test_npu_and_fpga_targets():
    for name, macs in (("ethos-u55-128", 128), ("ethos-u65-256", 256), ("ethos-u85-256", 256)):
        p = get_profile(name)
        npu = p.unit("npu")
        assert p.backends == ("tosa",) and p.precisions == ("int8",) and p.static_shapes
        assert {"Conv", "Add", "Relu", "MaxPool", "Reshape"} <= npu.ops
        assert "Softmax" not in npu.ops and "LayerNormalization" not in npu.ops
        assert not npu.supports_op("Einsum") and npu.supports_op("Conv")
        assert p.toolchain["vela_accelerator"] == name
        assert f"{macs} MACs" in npu.peak_ops["int8"].source
    assert get_profile("ethos-u55-128").peak("int8") == pytest.approx(128 * 2 * 500e6)
    kv = get_profile("kria-kv260")
    assert kv.backends == ("hls",) and kv.static_shapes and kv.precisions == ("fixed",)
    assert kv.unit("fpga").kind == "fpga" and "MatMul" in kv.unit("fpga").ops
    assert any("B4096" in c for c in kv.constraints)


def test_profiles_are_frozen_and_hashable():
    agx = get_profile("jetson-orin-agx")
    assert hash(agx) == hash(get_profile("jetson-orin"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        agx.name = "x"
    with pytest.raises(TypeError):
        agx.main_unit.peak_ops["fp32"] = Sourced(1.0, "x")  # type: ignore[index]
    assert len({get_profile(n) for n in STATIC}) == len(STATIC)


def test_profile_validation():
    unit = ComputeUnit("cpu", "cpu", peak_ops={"fp32": Sourced(1e9, "unverified: test")})
    mode = PowerMode("default", Sourced(1.0, "unverified: test"))
    kw = dict(name="t", description="", aliases=(), compute_units=(unit,),
              memory_bandwidth=Sourced(1e9, "unverified: t"),
              memory_capacity=Sourced(1e9, "unverified: t"), power_modes=(mode,),
              default_power_mode="default", backends=("onnxruntime",), precisions=("fp32",))
    assert DeviceProfile(**kw).peak("fp32") == 1e9
    with pytest.raises(ValueError):
        DeviceProfile(**{**kw, "backends": ("cuda",)})
    with pytest.raises(ValueError):
        DeviceProfile(**{**kw, "default_power_mode": "turbo"})
    with pytest.raises(ValueError):
        ComputeUnit("x", "tpu")
    with pytest.raises(ValueError):
        ComputeUnit("cpu", "cpu", peak_ops={"fp8": Sourced(1.0, "unverified: t")})


def test_format_table_and_json(profiles):
    table = format_table(profiles)
    for name in PROFILE_NAMES:
        assert name in table
    assert "85.5" in table  # AGX dense INT8 GPU TOPS
    for p in profiles:
        data = json.loads(json.dumps(p.to_dict()))
        assert data["name"] == p.name
        assert data["memory_bandwidth"]["source"] == p.memory_bandwidth.source
        for u in data["compute_units"]:
            assert all(v["source"] for v in u["peak_ops"].values())


def test_unverified_sources_are_reported():
    paths = dict(unverified_sources(get_profile("jetson-orin-agx")))
    assert "memory_bandwidth" in paths
    assert "gpu.peak_ops.int8" not in paths


def test_llvm_target_mapping():
    lt = host.llvm_target
    assert lt(("avx2", "fma"), "x86_64") == {"mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    assert lt(("avx2", "fma", "avx512f"), "x86_64")["mcpu"] == "skylake-avx512"
    assert lt(("avx512f", "avx512_vnni"), "x86_64")["mcpu"] == "cascadelake"
    assert lt(("avx512f", "avx512_vnni", "avx512_bf16"), "x86_64")["mcpu"] == "cooperlake"
    assert lt(("avx2", "fma", "avx_vnni"), "x86_64")["mcpu"] == "alderlake"
    assert lt(("avx512f", "amx_tile"), "x86_64")["mcpu"] == "sapphirerapids"
    assert lt((), "x86_64")["mcpu"] == "x86-64"
    assert lt(("neon",), "aarch64")["mtriple"] == "aarch64-linux-gnu"


def test_host_detection_measures_and_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "_MEMO", {})
    p = host.detect_host(cache_dir=tmp_path)  # no timing verdict: it depends on the machine
    assert p.is_host and p.name == "host"
    cpu = p.unit("cpu")
    assert cpu.cores >= 1 and cpu.llvm["mtriple"].endswith("linux-gnu")
    for prec in ("fp32", "int8"):
        assert cpu.peak_ops[prec].value > 1e8
        assert cpu.peak_ops[prec].source.startswith("measured:")
    assert "sgemm 1024^3" in cpu.peak_ops["fp32"].source
    assert p.memory_bandwidth.value > 1e8 and p.memory_bandwidth.source.startswith("measured:")
    assert p.memory_capacity.value > 2**20
    cache = tmp_path / "host.json"
    assert json.loads(cache.read_text())["measurements"]["fp32"]["value"] > 0

    host._MEMO.clear()  # force a cache read, not the in-process memo
    monkeypatch.setattr(host, "measure", lambda info=None: pytest.fail("re-measured"))
    again = host.detect_host(cache_dir=tmp_path)  # read from the cache: measure() would fail
    assert again.main_unit.peak_ops == cpu.peak_ops
    assert again.memory_bandwidth == p.memory_bandwidth
    assert host.detect_host(cache_dir=tmp_path) is again  # memoized in-process


def test_host_cache_rejects_stale_or_corrupt(tmp_path):
    path = tmp_path / "host.json"
    path.write_text("{not json")
    assert host._load_cache(path, "k") is None
    path.write_text(json.dumps({"key": "other", "measurements": {}}))
    assert host._load_cache(path, "k") is None
    good = {"fp32": {"value": 1e9, "source": "measured: x"},
            "bandwidth": {"value": 1e9, "source": "measured: y"}}
    path.write_text(json.dumps({"key": "k", "measurements": good}))
    assert host._load_cache(path, "k") == good


def test_get_profile_host(profiles):
    assert get_profile("host") is profiles[0]
    assert get_profile("LOCAL") is profiles[0]
