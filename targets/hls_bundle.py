"""The text files of an hls4ml bundle for the Kria KV260: build.sh and README.md."""

from __future__ import annotations

from typing import Any

__all__ = ["build_script", "readme"]


def build_script(project: str, part: str) -> str:
    """Vitis HLS C synthesis and IP export of the emitted project (needs AMD's tools)."""
    return f"""#!/bin/sh
# Synthesise the hls4ml project for {part} and export it as a Vivado IP.
# Needs AMD Vitis HLS (2023.2 or newer) on PATH; edgec could not run it where it compiled.
set -e
cd "$(dirname "$0")/hls_prj"
if ! command -v vitis_hls >/dev/null 2>&1; then
    echo "vitis_hls not found: source <Vitis install>/settings64.sh first" >&2
    exit 1
fi
# build_prj.tcl is hls4ml's: csim, synth, cosim, export, vsynth switches
vitis_hls -f build_prj.tcl "reset=1 csim=0 synth=1 cosim=0 validation=0 export=1 vsynth=0"
echo "IP: $(pwd)/{project}_prj/solution1/impl/ip ; reports: {project}_prj/solution1/syn/report"
"""


def readme(report: dict[str, Any]) -> str:
    est = report["estimate"]
    io = report["io_type"]
    lines = [
        f"# edgec bundle: {report['device']} / hls (hls4ml {report['hls4ml']})", "",
        f"A dataflow design of the model for {report['part']} at {report['clock_ns']} ns "
        f"({1e3 / report['clock_ns']:.0f} MHz), {io}, every layer in its own ap_fixed types "
        "and reuse factor (`hls_report.json`, `manifest.json`).", "",
        "Predicted (edgec's analytic model, not a synthesis report): "
        f"{est['latency_cycles']} cycles = {est['latency_us']} us latency, one inference "
        f"every {est['interval_cycles']} cycles; {est['dsp']} DSP, {est['lut']} LUT, "
        f"{est['bram36']} BRAM36.", "",
        "## Files",
        "- `hls_prj/`: the hls4ml project: `firmware/` (the HLS C++ top function "
        f"`{report['project']}`, `parameters.h`, `defines.h` with the types, `weights/`), "
        "`build_prj.tcl`, the test bench;",
        f"- `{report['csim_library']}`: the C-simulation library built here with g++ "
        "(`edgec.load(bundle).run(...)` runs it on the host, bit-exact with the design);",
        "- `build.sh`: Vitis HLS synthesis and IP export (needs `vitis_hls`).", "",
        "## On the KV260",
        "1. `sh build.sh` on a machine with Vitis HLS: synthesis reports in "
        f"`hls_prj/{report['project']}_prj/solution1/syn/report/` (check latency and "
        "resources against the prediction) and the IP in `.../impl/ip`.",
        "2. Vivado: new project for the KV260 board (part "
        f"`{report['part']}`), add the IP repository, create a block design with the Zynq "
        "UltraScale+ MPSoC (run block automation with the KV260 preset), "
        + ("an AXI DMA whose MM2S/S2MM streams connect to the IP's input/output streams "
           "(io_stream: AXI-Stream ports), "
           if io == "io_stream" else
           "an AXI DMA with the IP wrapped for AXI-Stream (hls4ml's `VivadoAccelerator`/"
           "`VitisAccelerator` backends generate such a wrapper) or an AXI-Lite interface, ")
        + "clock the IP from pl_clk0 at the bundle's clock, validate, generate the bitstream "
        "and export the hardware (.xsa / .bit + .hwh).",
        "3. PYNQ on the KV260 (Kria-PYNQ): copy the .bit/.hwh, `Overlay(...)`, allocate "
        "input/output buffers with `pynq.allocate`, and move data through the DMA. Inputs are "
        f"channels-last ({report['input_shape']}) in the input type `{report['input_type']}`;"
        " convert floats to that type's integer codes (value * 2^F) on the ARM cores.", "",
        "Numerics: the C simulation equals edgec's exact fixed-point reference of the graph "
        "(`hls_report.json` -> `csim_check`); its accuracy against FP32 is in `manifest.json`.",
    ]
    return "\n".join(lines) + "\n"
