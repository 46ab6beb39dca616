"""Interleaved timing: every candidate runs once per round, so a slow patch on a shared machine hits all alike."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

from vitlit.private_api import cpu_has_native_bf16


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    candidates: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each candidate over ``repeats`` rounds, after ``warmup`` untimed rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)  # rotate who goes first, so no candidate always follows the same one
        for name in names[shift:] + names[:shift]:
            run = candidates[name]
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pastes into the README as is)."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def cpu_capability() -> str:
    """The CPU's vector capability and whether bfloat16 is native there: every CPU figure is printed with it."""
    native = "native bf16" if cpu_has_native_bf16() else "bf16 emulated"
    return f"torch.backends.cpu.get_cpu_capability()={torch.backends.cpu.get_cpu_capability()}, {native}"


def emulated_bf16(device: torch.device) -> bool:
    """True on a CPU without native bfloat16, where bf16 rows would time the emulation: benchmarks skip them."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        print(f"(bf16 rows skipped: this CPU emulates bfloat16; {cpu_capability()})")
        return True
    return False


def describe_machine(device: torch.device) -> str:
    """One line: the CPU (or GPU), cores/threads, and the library versions that set the speed."""
    import lightning
    import torchvision

    if device.type == "cuda":
        hardware = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        hardware = f"{_cpu_name()} ({cpu_capability()}), {torch.get_num_threads()} threads"
    return (
        f"{hardware}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"lightning {lightning.__version__}, Python {platform.python_version()}"
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
