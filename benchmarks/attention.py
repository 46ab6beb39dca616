"""Attention kernels on this machine: SDPA (fused; flash on CPU) vs its math backend vs matmul + softmax.

Decides :func:`vitlit.models.vit.attention`'s choice: the explicit form wins for bfloat16 on CPUs. ViT-B/16 shapes.

    python -m benchmarks.attention
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.timing import describe_machine, emulated_bf16, markdown_table, time_interleaved


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def math_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v)


def main(batch: int = 8, heads: int = 12, tokens: int = 197, head_dim: int = 64, repeats: int = 10) -> None:
    device = torch.device("cpu")
    kernels = {"sdpa (fused)": fused, "sdpa math": math_backend, "matmul + softmax": explicit}
    rows = []
    dtypes = (torch.float32,) if emulated_bf16(device) else (torch.float32, torch.bfloat16)
    for dtype in dtypes:
        for train in (False, True):
            q, k, v = (torch.randn(batch, heads, tokens, head_dim, dtype=dtype, requires_grad=train) for _ in range(3))

            def step(kernel, q=q, k=k, v=v, train=train) -> None:
                out = kernel(q, k, v)
                if train:
                    out.sum().backward()

            candidates = {name: partial(step, kernel) for name, kernel in kernels.items()}
            seconds = time_interleaved(candidates, device, repeats)
            fastest = min(seconds.values())
            rows.append(
                [str(dtype).removeprefix("torch."), "forward + backward" if train else "forward"]
                + [f"{value * 1e3:.1f} ms ({value / fastest:.2f}x)" for value in seconds.values()]
            )
    shape = f"({batch}, {heads}, {tokens}, {head_dim})"
    print(f"\nOne attention call, {shape}, median of {repeats}: {describe_machine(device)}\n")
    print(markdown_table(["dtype", "step", *kernels], rows))


if __name__ == "__main__":
    main()
