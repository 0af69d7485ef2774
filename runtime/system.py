"""The machine a measurement was taken on: what makes a number comparable, or not."""

from __future__ import annotations

import os
import platform

import onnxruntime as ort

# CPU features that change onnxruntime's kernels: x86 SIMD/VNNI/AMX, ARM dot-product, int8 matmul, SVE.
_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")


def machine_context(emulated: bool = False) -> dict:
    cpuinfo = _cpuinfo()
    flags = set((cpuinfo.get("flags") or cpuinfo.get("features") or "").split())
    return {
        "cpu": cpuinfo.get("model name") or cpuinfo.get("cpu part") and f"ARM part {cpuinfo['cpu part']}"
        or platform.processor() or "unknown",
        "architecture": platform.machine(),
        "features": [f for f in _FEATURES if f in flags],
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "hostname": platform.node(),
        # Timings under an emulator (qemu-user) say nothing about device speed.
        "emulated": emulated or os.environ.get("EDGEFOLD_EMULATED") == "1",
    }


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() not in info:
                    info[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return info
