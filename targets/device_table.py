"""The device table: one frozen DeviceProfile per named edge device, every number sourced.

See `targets.profile` for what the fields mean and how much each source tag is trusted.
"""

from __future__ import annotations

from targets.profile import GIB, PRECISIONS, ComputeUnit, DeviceProfile, PowerMode, Sourced

__all__ = ["TABLE"]

def S(value: float, source: str) -> Sourced:  # noqa: N802 - short on purpose in the table
    return Sourced(float(value), source)


# ------------------------------------------------------------------------------------------
# Sources used more than once
DLA_README = ("vendor: NVIDIA/Deep-Learning-Accelerator-SW README, Jetson AGX Orin 64GB sparse "
              "INT8 TOPS per power mode (GPU 171/109/41/14, 2xDLA 105/92/90/40, total "
              "275/200/131/54 at MAXN/50W/30W/15W)")
DLA_OPS_README = "vendor: NVIDIA/Deep-Learning-Accelerator-SW operators/README.md (TensorRT native)"
TECH_BRIEF = ("secondary: Jetson AGX Orin Series Technical Brief as quoted by mzph.cn "
              "(2048 CUDA cores, 5.3 FP32 TFLOPS, 64 Tensor Cores)")
MLPERF_SYS = ("secondary: MLPerf Inference v3.1 system descriptions closed/NVIDIA/systems "
              "(devices.md)")
FP16_HALF = ("derived: dense FP16/BF16 tensor-core rate = 1/2 dense INT8 rate on Ampere "
             "(NVIDIA A100 whitepaper: 312 FP16 vs 624 INT8 TOPS)")
A78_NEON = "2x128-bit NEON FMA pipes per Cortex-A78AE core = 16 FP32 FLOP/cycle"
VELA_INI = "vendor: ethos-u-vela 5.2.0 ethosu/config_files/Arm/vela.ini"
VELA_TOSA_OPS = "vendor: ethos-u-vela 5.2.0 ethosu/vela/tosa_supported_operators.py"
CORSTONE300_SRAM = ("vendor: ARM ml-embedded-evaluation-kit docs/sections/memory_considerations.md "
                    "(Corstone-300: ISRAM0+ISRAM1 = 4 MiB for activations; 32 MiB DDR region "
                    "holds the model)")

# ONNX ops the Orin DLA runs natively through TensorRT (Q/DQ are consumed as precision).
DLA_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv",
    "ConvTranspose", "Cos", "Equal", "Gemm", "LeakyRelu", "LRN", "MatMul", "Max", "MaxPool", "Mul",
    "PRelu", "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Sub", "Sum", "Tanh",
    "Transpose", "Upsample", "QuantizeLinear", "DequantizeLinear",
})
# ONNX ops that lower to the TOSA operators Vela maps onto the NPU (CONV2D, DEPTHWISE_CONV2D,
# pooling, FULLY_CONNECTED, RESHAPE, TRANSPOSE, CONCAT, SLICE, ADD/MUL/SUB, RESCALE, CLAMP,
# TABLE, PAD, IDENTITY); everything else runs on the Cortex-M host.
ETHOS_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Flatten",
    "Squeeze", "Unsqueeze", "Transpose", "Concat", "Slice", "Split", "Add", "Sub", "Mul", "Relu",
    "Clip", "Sigmoid", "Tanh", "Pad", "Identity", "QuantizeLinear", "DequantizeLinear",
})
# hls4ml 1.3.0 ONNX handlers (converters/onnx/*.py); Gemm reaches them as MatMul after qonnx.
HLS4ML_OPS = frozenset({
    "Conv", "MatMul", "Gemm", "Relu", "Tanh", "Sigmoid", "LeakyRelu", "ThresholdedRelu", "Elu",
    "Selu", "PRelu", "Softmax", "Softsign", "Softplus", "BatchNormalization", "Quant", "IntQuant",
    "BipolarQuant", "Add", "Sub", "Mul", "Div", "Max", "Min", "Concat", "Sum", "AveragePool",
    "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "Transpose", "Reshape", "Flatten", "Resize",
    "Pad", "Constant", "Identity", "Dropout",
})

ARM64_LLVM = {"mtriple": "aarch64-linux-gnu"}
JETSON_BACKENDS = ("tensorrt", "onnxruntime", "tvm")


def _a78_cpu(cores: int, ghz: float, clock_src: str) -> ComputeUnit:
    flops = cores * ghz * 1e9 * 16
    return ComputeUnit(
        "cpu", "cpu", cores=cores, isa=("neon", "dotprod", "fp16"),
        llvm={**ARM64_LLVM, "mcpu": "cortex-a78ae"},
        peak_ops={
            "fp32": S(flops, f"derived: {cores} cores x {ghz} GHz ({clock_src}) x {A78_NEON}"),
            "int8": S(flops * 4, f"derived: {cores} cores x {ghz} GHz ({clock_src}) x 2 pipes "
                                 "x 16 int8 MACs (SDOT) x 2 ops = 64 ops/cycle"),
        })


def _jetson_gpu(fp32: Sourced, int8_dense: float, int8_src: str) -> ComputeUnit:
    fp16 = S(int8_dense / 2, FP16_HALF)
    return ComputeUnit(
        "gpu", "gpu", cuda_arch="sm_87",
        peak_ops={"fp32": fp32, "fp16": fp16, "bf16": fp16, "int8": S(int8_dense, int8_src)})


JETSON_RULES = (
    "DLA runs INT8/FP16 only; layers it cannot run fall back to the GPU (TensorRT GPU fallback) "
    "- " + DLA_OPS_README,
    "DLA MatMul needs a constant second input - " + DLA_OPS_README,
    "peak TOPS are dense; NVIDIA's headline figures assume 2:4 structured sparsity (x2)",
    "channel_alignment 16: DLA/GPU native formats kCHW16 (FP16) / kCHW32 (INT8) - secondary: "
    "NVIDIA DLA FAQ via CSDN translation",
)

_AGX = DeviceProfile(
    name="jetson-orin-agx",
    description="NVIDIA Jetson AGX Orin 64GB: Ampere GPU (2048 CUDA cores), 2x DLA v2, "
                "12x Cortex-A78AE",
    aliases=("jetson-orin", "agx-orin", "orin-agx"),
    compute_units=(
        _jetson_gpu(S(5.3e12, TECH_BRIEF), 85.5e12, "derived: 171 sparse TOPS / 2 - " + DLA_README),
        ComputeUnit("dla", "dla", count=2, ops=DLA_OPS, peak_ops={
            "int8": S(26.25e12, "derived: 105 sparse TOPS (2x DLA) / 2 dense / 2 DLAs - "
                      + DLA_README)}),
        _a78_cpu(12, 2.2, "unverified: AGX Orin max CPU clock 2.2 GHz"),
    ),
    memory_bandwidth=S(204.8e9, "unverified: devices.md; = 256-bit LPDDR5 x 6400 MT/s / 8"),
    memory_capacity=S(64 * GIB, "secondary: 64 GB 256-bit LPDDR5 - " + MLPERF_SYS),
    power_modes=(
        PowerMode("MAXN", S(60, "secondary: AGX Orin 15-60 W configurable (fixstars.com; "
                                "devices.md)"), 1.0, DLA_README),
        PowerMode("50W", S(50, "vendor: nvpmodel budget named in " + DLA_README), 200 / 275,
                  DLA_README, {"gpu": 109 / 171, "dla": 92 / 105}),
        PowerMode("30W", S(30, "vendor: nvpmodel budget named in " + DLA_README), 131 / 275,
                  DLA_README, {"gpu": 41 / 171, "dla": 90 / 105}),
        PowerMode("15W", S(15, "vendor: nvpmodel budget named in " + DLA_README), 54 / 275,
                  DLA_README, {"gpu": 14 / 171, "dla": 40 / 105}),
    ),
    default_power_mode="MAXN", backends=JETSON_BACKENDS, precisions=PRECISIONS,
    channel_alignment=16, constraints=JETSON_RULES + (
        "CPU clock caps per power mode are not modelled (cpu unit unscaled)",),
)

_NX = DeviceProfile(
    name="jetson-orin-nx",
    description="NVIDIA Jetson Orin NX 16GB: Ampere GPU (1024 CUDA cores), 2x DLA v2, "
                "8x Cortex-A78AE",
    aliases=("orin-nx",),
    compute_units=(
        _jetson_gpu(S(1024 * 2 * 0.918e9, "derived: 1024 CUDA cores x 2 (FMA) x 918 MHz (max GPU "
                                          "clock, secondary: deviceQuery on Orin NX 16GB, gist "
                                          "atinfinity)"),
                    30e12, "derived: (100 - 40) sparse TOPS / 2; 100 = vendor: Jetson Orin NX "
                           "datasheet (up to 100 TOPS), 40 = 2xDLA at AGX 15W - " + DLA_README),
        ComputeUnit("dla", "dla", count=2, ops=DLA_OPS, peak_ops={
            "int8": S(10e12, "derived: 40 sparse TOPS (2xDLA; 'max DLA TOPs on Orin NX 16GB "
                      "comparable to AGX 15W') / 2 dense / 2 DLAs - " + DLA_README)}),
        _a78_cpu(8, 2.0, "unverified: Orin NX max CPU clock 2.0 GHz"),
    ),
    memory_bandwidth=S(102.4e9, "unverified: devices.md; = 128-bit LPDDR5 x 6400 MT/s / 8"),
    memory_capacity=S(16 * GIB, "secondary: 16 GB 128-bit LPDDR5 - " + MLPERF_SYS),
    power_modes=(
        PowerMode("25W", S(25, "vendor: Jetson Orin NX datasheet (10-25 W)"), 1.0, "fastest"),
        PowerMode("15W", S(15, "vendor: Jetson Orin NX datasheet (10-25 W)"), 15 / 25,
                  "unverified: no per-mode TOPS published; power-budget ratio placeholder"),
        PowerMode("10W", S(10, "vendor: Jetson Orin NX datasheet (10-25 W)"), 10 / 25,
                  "unverified: no per-mode TOPS published; power-budget ratio placeholder"),
    ),
    default_power_mode="25W", backends=JETSON_BACKENDS, precisions=PRECISIONS,
    channel_alignment=16, constraints=JETSON_RULES,
)

_NANO_68 = S(68e9, "vendor: Jetson Orin Nano 8GB datasheet, 68 GB/s (non-Super modes; "
                   "devices.md [3])")
_NANO = DeviceProfile(
    name="jetson-orin-nano",
    description="NVIDIA Jetson Orin Nano 8GB (Super, JetPack 6.2): Ampere GPU (1024 CUDA cores), "
                "no DLA, 6x Cortex-A78AE",
    aliases=("orin-nano", "jetson-orin-nano-super"),
    compute_units=(
        _jetson_gpu(S(1024 * 2 * 1.02e9, "derived: 1024 CUDA cores x 2 (FMA) x 1020 MHz (Super GPU "
                                         "clock, vendor: Orin Nano Super announcement, "
                                         "devices.md [3])"),
                    33.5e12, "derived: 67 sparse TOPS (Super) / 2 - vendor: Orin Nano Super "
                             "announcement (devices.md [3])"),
        _a78_cpu(6, 1.7, "secondary: 1.7 GHz Super CPU clock, brojogopalsapui.com citing the "
                         "Orin Nano Super datasheet"),
    ),
    memory_bandwidth=S(102e9, "vendor: Orin Nano Super announcement, 102 GB/s (devices.md [3])"),
    memory_capacity=S(8 * GIB, "vendor: Jetson Orin Nano datasheet, 8GB 128-bit LPDDR5"),
    power_modes=(
        PowerMode("25W", S(25, "vendor: Orin Nano Super (MAXN SUPER) 25 W (devices.md [3])"), 1.0,
                  "fastest (Super)"),
        PowerMode("15W", S(15, "vendor: Jetson Orin Nano datasheet 7-15 W (devices.md [3])"),
                  40 / 67, "derived: 40 sparse TOPS (original 15 W spec) / 67 (Super)",
                  bandwidth=_NANO_68),
        PowerMode("7W", S(7, "vendor: Jetson Orin Nano datasheet 7-15 W (devices.md [3])"),
                  7 / 25, "unverified: no 7 W TOPS published; power-budget ratio placeholder",
                  bandwidth=_NANO_68),
    ),
    default_power_mode="25W", backends=JETSON_BACKENDS, precisions=PRECISIONS,
    channel_alignment=8, constraints=(
        "no DLA (fused off on Orin Nano): everything runs on the GPU",
        "channel_alignment 8: FP16 tensor-core kernels want channel counts that are multiples "
        "of 8 - unverified: NVIDIA Deep Learning Performance Guide",
        "peak TOPS are dense; NVIDIA's headline figures assume 2:4 structured sparsity (x2)",
    ),
)

_RPI5 = DeviceProfile(
    name="raspberry-pi-5",
    description="Raspberry Pi 5 (8GB): Broadcom BCM2712, 4x Cortex-A76 @ 2.4 GHz",
    aliases=("rpi5", "pi5", "raspberry-pi5"),
    compute_units=(
        ComputeUnit(
            "cpu", "cpu", cores=4, isa=("neon", "dotprod", "fp16"),
            llvm={**ARM64_LLVM, "mcpu": "cortex-a76"},
            peak_ops={
                "fp32": S(153.6e9, "derived: 4 cores x 2.4 GHz x 16 FP32 FLOP/cycle (2x128-bit "
                                   "NEON FMA units); clock: secondary, Upton 2023 announcement "
                                   "via hippocampus.si / circuitdigest.com"),
                "fp16": S(307.2e9, "derived: 2x the FP32 rate (ARMv8.2 FP16 arithmetic, 8 lanes "
                                   "per 128-bit FMA)"),
                "int8": S(614.4e9, "derived: 4 cores x 2.4 GHz x 2 pipes x 16 int8 MACs (SDOT) "
                                   "x 2 ops = 64 ops/cycle"),
            }),
    ),
    memory_bandwidth=S(4267e6 * 4, "derived: 32-bit LPDDR4X x 4267 MT/s / 8 = 17.07 GB/s peak "
                                   "(secondary: circuitdigest.com, liliputing.com)"),
    memory_capacity=S(8 * GIB, "secondary: 4GB or 8GB LPDDR4X-4267 (Upton 2023 via "
                               "hippocampus.si); 8GB model assumed"),
    power_modes=(PowerMode("default", S(27, "unverified: upper bound = official 27 W USB-C supply "
                                            "(5.1 V, 5 A); board draw under load not sourced")),),
    default_power_mode="default", backends=("tvm", "onnxruntime"),
    precisions=("fp32", "fp16", "int8", "int4-weight"),
    constraints=("no bf16 arithmetic or i8mm on Cortex-A76 (ARMv8.2-A + dotprod)",),
)

_MTL = DeviceProfile(
    name="intel-core-ultra",
    description="Intel Core Ultra 7 155H (Meteor Lake): 6P+8E+2LPE CPU, Arc iGPU (8 Xe cores), "
                "NPU 3",
    aliases=("meteor-lake", "core-ultra", "intel-meteor-lake"),
    compute_units=(
        ComputeUnit("igpu", "gpu", peak_ops={
            "fp32": S(4.608e12, "derived: 128 vector engines x 8 FP32 lanes (unverified) x 2 "
                                "(FMA) x 2.25 GHz; engines and clock: press, meterpreter.org "
                                "Geekbench listing of the 155H"),
            "fp16": S(9.216e12, "derived: 2x FP32 rate (unverified for Xe-LPG)"),
            "int8": S(18e12, "unverified: Intel Meteor Lake platform claim of 18 GPU TOPS "
                             "(~ 4x FP32 via DP4a = 18.4, derived)"),
        }),
        ComputeUnit("npu", "npu", static_shapes=True, peak_ops={
            "int8": S(11e12, "press: The Register 2024-04-10 (~11 TOPS); 11.5 TOPS for NPU 3 per "
                             "Intel Lunar Lake briefing (press: zareason.com)"),
            "fp16": S(5.5e12, "unverified: half the INT8 rate assumed; Intel publishes INT8 only"),
        }),
        ComputeUnit("cpu", "cpu", cores=16, isa=("avx2", "fma", "avx_vnni"),
                    llvm={"mtriple": "x86_64-linux-gnu", "mcpu": "meteorlake"},
                    peak_ops={
                        "int8": S(5e12, "unverified: Intel Meteor Lake platform claim of 5 CPU "
                                        "TOPS (INT8)"),
                        "fp32": S(1.25e12, "unverified: derived 5 CPU TOPS / 4 (VNNI packs 4 "
                                           "int8 MACs per FP32 FMA lane)"),
                    }),
    ),
    memory_bandwidth=S(128 / 8 * 7467e6, "derived: 128-bit (unverified) x LPDDR5x-7467 MT/s / "
                                         "8 = 119.5 GB/s; speed: secondary, user report on "
                                         "Core Ultra 9 185H (huggingface.co/raincandy-u)"),
    memory_capacity=S(32 * GIB, "unverified: typical laptop configuration (2x16 GB LPDDR5x)"),
    power_modes=(PowerMode("28W", S(28, "press: meterpreter.org (155H TDP 28 W); notebookcheck "
                                        "(H-series 28-115 W)"), 1.0,
                           "vendor peaks; sustained throughput at base power not published"),),
    default_power_mode="28W", backends=("openvino", "onnxruntime", "tvm"),
    precisions=("fp32", "fp16", "int8", "int4-weight"),
    constraints=(
        "npu: static shapes only, no HETERO mode - vendor: OpenVINO supported-devices "
        "documentation (devices.md)",
        "cpu has AVX-VNNI but no AVX-512/AMX: no bf16 arithmetic",
    ),
)


def _ethos(name: str, macs: int, clock: float, system: str, mode: str, bw_gbs: float,
           bw_src: str, capacity: Sourced, desc: str, notes: tuple[str, ...]) -> DeviceProfile:
    accel = name
    return DeviceProfile(
        name=name, description=desc, aliases=(name.replace("ethos-", ""),),
        compute_units=(ComputeUnit("npu", "npu", ops=ETHOS_OPS, static_shapes=True, peak_ops={
            "int8": S(macs * 2 * clock, f"derived: {macs} MACs/cycle (Vela accelerator "
                                        f"{accel}) x 2 ops x {clock / 1e6:g} MHz (core_clock "
                                        f"of {system}, {VELA_INI})")}),),
        memory_bandwidth=S(bw_gbs * 1e9, f"{VELA_INI}: {system} {bw_src}"),
        memory_capacity=capacity,
        power_modes=(PowerMode("default", S(0.5, "unverified: NPU+SRAM power not published; "
                                                 "0.5 W placeholder")),),
        default_power_mode="default", backends=("tosa",), precisions=("int8",),
        static_shapes=True, channel_alignment=16,
        constraints=(
            "int8 weights/activations only (int16 activations with int8 weights also "
            "compile: TOSA PRO-INT, Vela rejects fp32) - reference/npu-fpga-notes.md",
            "static shapes only: Vela compiles a fixed command stream",
            "ops outside the NPU set run on the Cortex-M host; Softmax and Resize are not in "
            "Vela's TOSA set - " + VELA_TOSA_OPS,
            "per-op limits (kernel, stride, rank) apply - " + VELA_TOSA_OPS,
            "channel_alignment 16: Vela's NHCWB16 feature-map format (ethosu/vela/tensor.py)",
        ) + notes,
        toolchain={"vela_accelerator": accel, "vela_system_config": system,
                   "vela_memory_mode": mode},
    )


_CS300_4MIB = S(4 * 2**20, CORSTONE300_SRAM)
_U55 = _ethos("ethos-u55-128", 128, 500e6, "Ethos_U55_High_End_Embedded", "Shared_Sram", 4.0,
              "SRAM 4 GB/s (Flash 0.5 GB/s)", _CS300_4MIB,
              "Arm Ethos-U55 (128 MACs) on Corstone-300 (Cortex-M55), Vela High-End Embedded",
              ("weights stream from flash over AXI1 at 0.5 GB/s - " + VELA_INI,))
_U65 = _ethos("ethos-u65-256", 256, 500e6, "Ethos_U65_Embedded", "Shared_Sram", 8.0,
              "SRAM 8 GB/s (Flash 0.5 GB/s)", _CS300_4MIB,
              "Arm Ethos-U65 (256 MACs) on Corstone-300, Vela Ethos_U65_Embedded / Shared_Sram "
              "(the pairing used by ARM CMSIS-Ethos-U FVP examples)",
              ("Vela's own default for U65 is Ethos_U65_Client_Server (1 GHz) with "
               "Dedicated_Sram_384KB - ethosu/vela/architecture_features.py",))
_U85 = _ethos("ethos-u85-256", 256, 1e9, "Ethos_U85_SYS_DRAM_Mid", "Shared_Sram", 32.0,
              "SRAMx2 32 GB/s (DRAM 12 GB/s)",
              S(4 * 2**20, "unverified: Corstone-320 4 MiB ISRAM (secondary: ExecuTorch Zephyr "
                           "notes)"),
              "Arm Ethos-U85 (256 MACs) on Corstone-320 (Cortex-M85), Vela SYS_DRAM_Mid",
              ("U85 supports more TOSA ops than listed (e.g. Resize, Gather); not modelled",))

_KV260 = DeviceProfile(
    name="kria-kv260",
    description="AMD Kria KV260 (K26 SOM, Zynq UltraScale+ XCK26): hls4ml dataflow designs in "
                "programmable logic",
    aliases=("kv260", "kria"),
    compute_units=(ComputeUnit("fpga", "fpga", ops=HLS4ML_OPS, static_shapes=True, peak_ops={
        "fixed": S(1248 * 2 * 200e6, "derived: 1248 DSP48E2 (vendor: Kria KV260 apps docs, "
                                     "hw_arch_accel resource table) x 1 MAC x 2 ops x 200 MHz "
                                     "(hls4ml 1.3.0 Vitis default clock_period=5 ns)"),
        "int8": S(1248 * 2 * 200e6, "derived: 1248 DSP48E2 (vendor: Kria KV260 apps docs, "
                                    "hw_arch_accel resource table) x 1 MAC x 2 ops x 200 MHz "
                                    "(hls4ml 1.3.0 Vitis default clock_period=5 ns)"),
        "fp32": S(1248 * 2 * 200e6, "derived: as int8 - fp32 layers become hls4ml "
                                    "fixed<16,6> (1 MAC per DSP48E2)"),
    }),),
    memory_bandwidth=S(64 / 8 * 2400e6, "derived: 64-bit x 2400 Mb/s / 8 = 19.2 GB/s - "
                                        "datasheet: Kria K26 SOM DS987 v1.1 (4 GB 64-bit "
                                        "2400 Mb/s)"),
    memory_capacity=S(4 * GIB, "datasheet: Kria K26 SOM DS987 v1.1 (4 GB DDR4)"),
    power_modes=(PowerMode("default", S(7.9, "estimated: vendor, Kria KV260 NLP-SmartVision "
                                             "docs (K26 overall, DPU B3136 at 300 MHz)")),),
    default_power_mode="default", backends=("hls",), precisions=("fixed",),
    static_shapes=True,
    constraints=(
        "no floating point on the fabric: precision 'fixed' gives every layer its own "
        "ap_fixed<W,I> types from calibration data (passes/fixed_point.py; hls4ml's own "
        "default would be fixed<16,6> everywhere, utils/config.py)",
        "standard Q/DQ must become QONNX Quant first (qonnx QCDQToQuant); Conv needs explicit "
        "dilations/group - reference/npu-fpga-notes.md",
        "designs are resource-bound: every layer is unrolled in LUTs/DSPs (reuse factor trades "
        "throughput for area); large models do not fit",
        "reference: AMD DPU B4096 soft IP peaks at 4096 ops/clk x 300 MHz = 1.23 TOPS INT8 "
        "(derived; vendor: PG338, UG1354 ZCU104 dual B4096 = 2.46 TOPS) - not an edgec backend",
    ),
    toolchain={"hls4ml_backend": "Vitis", "part": "xck26-sfvc784-2LV-c", "clock_period_ns": "5"},
)

TABLE: tuple[DeviceProfile, ...] = (_AGX, _NX, _NANO, _RPI5, _MTL, _U55, _U65, _U85, _KV260)
