"""Which precision a run asks for and which one this machine runs fastest.

``16-mixed`` means fp16 autocast, which only CUDA GPUs run well (on a CPU it is tens of
times slower). Without a GPU, bf16 autocast is the mixed-precision path, but only CPUs
with native bf16 instructions (AVX512-BF16, AMX, Arm BF16) run it faster than float32;
elsewhere PyTorch emulates it and it runs 2-3x slower, so float32 is used instead.
"""

from __future__ import annotations

import contextlib
import platform
from functools import cache
from pathlib import Path

_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU lists bf16 instructions; True where the CPU cannot be inspected."""
    path = Path(cpuinfo)
    if not path.is_file():
        return True  # e.g. macOS: keep bf16, which Apple's recent chips run natively
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return bool(_NATIVE_BF16_FLAGS & set(value.split()))
    return True


def cpu_name() -> str:
    """The CPU model, as /proc/cpuinfo names it (the platform's processor name elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def resolve_precision(requested: str, cuda: bool, native_bf16: bool | None = None) -> tuple[str, str]:
    """The precision to run for ``requested`` and the reason when it differs.

    ``16-mixed`` runs as asked on a CUDA GPU; elsewhere it becomes ``bf16-mixed`` on a CPU
    with native bf16 and ``32-true`` on one without. Every other value is left as asked.
    """
    if requested not in ("16-mixed", "16") or cuda:
        return requested, ""
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if native:
        return "bf16-mixed", "fp16 autocast needs a CUDA GPU"
    return "32-true", "fp16 autocast needs a CUDA GPU, and this CPU has no native bf16 (emulated bf16 runs slower than float32)"
