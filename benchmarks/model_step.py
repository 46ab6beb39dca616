"""Model step speed: vitlit's ViT-B/16 vs torchvision ``vit_b_16`` vs timm ``vit_base_patch16_224``.

Times the forward pass (eval, inference mode) and a training step (forward, cross-entropy, backward,
AdamW step) in float32 and under bfloat16 autocast, on the CPU and, when there is one, on a CUDA GPU
with and without ``torch.compile``. The three models run in turn inside every timing round, so the
ratios compare like with like even on a busy machine. All three are built with dropout 0 and 3 classes.

    python -m benchmarks.model_step                       # CPU (and CUDA when present), batch 8
    python -m benchmarks.model_step --quick               # 2-block models, a smoke test in seconds
    python -m benchmarks.model_step --device cuda --batch-size 128 --compile both
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.timing import describe_machine, emulated_bf16, markdown_table, time_interleaved
from vitlit.models.vit import ViT

NUM_CLASSES = 3
IMAGE_SIZE = 224
# Dense bfloat16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a piece of the device name;
# the first match wins, so more specific names come first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
)


def build_models(quick: bool) -> dict[str, nn.Module]:
    """The three ViT-B/16s (or, with ``quick``, 2-block width-192 versions of each), dropout 0."""
    width, depth, heads, mlp = (192, 2, 3, 768) if quick else (768, 12, 12, 3072)
    vitlit = ViT(
        NUM_CLASSES,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
        dropout=0.0,
    )
    tv = torchvision.models.VisionTransformer(
        image_size=IMAGE_SIZE,
        patch_size=16,
        num_layers=depth,
        num_heads=heads,
        hidden_dim=width,
        mlp_dim=mlp,
        num_classes=NUM_CLASSES,
    )
    tm = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=NUM_CLASSES, embed_dim=width, depth=depth, num_heads=heads
    )
    return {"vitlit": vitlit, "torchvision": tv, "timm": tm}


def forward_flops_per_image(model: nn.Module, device: torch.device) -> float:
    """FLOPs of one forward pass on one image (matmuls, convolutions and attention, as PyTorch counts them)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device))
    return float(counter.get_total_flops())


def bf16_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def make_step(
    model: nn.Module, mode: str, precision: str, images: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    """A closure running one forward pass (``mode="forward"``) or one training step (``mode="train"``)."""
    device = images.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    if mode == "forward":

        def forward() -> None:
            with torch.inference_mode(), autocast:
                model(images)

        return forward

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "all"], default="all", help="all: CPU, then CUDA if present"
    )
    parser.add_argument("--batch-size", type=int, help="default 8 on the CPU, 128 on CUDA")
    parser.add_argument("--repeats", type=int, help="timed rounds per cell (median reported); default 3 CPU, 20 CUDA")
    parser.add_argument("--warmup", type=int, help="untimed rounds first; default 1 CPU, 3 CUDA")
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--compile", choices=["off", "on", "both"], default="both", help="torch.compile variants on CUDA (CPU: off)"
    )
    parser.add_argument("--quick", action="store_true", help="2-block models, batch 2, one round: a smoke test")
    args = parser.parse_args()

    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and not devices:
        parser.error("--device cuda, but torch.cuda.is_available() is False")

    torch.manual_seed(0)
    for device in devices:
        cuda = device.type == "cuda"
        if cuda:
            torch.set_float32_matmul_precision("high")
        batch = 2 if args.quick else args.batch_size or (128 if cuda else 8)
        repeats = 1 if args.quick else args.repeats or (20 if cuda else 3)
        warmup = 1 if args.quick else args.warmup if args.warmup is not None else (3 if cuda else 1)
        compile_options = {"off": [False], "on": [True], "both": [False, True]}[args.compile] if cuda else [False]
        models = {name: model.to(device) for name, model in build_models(args.quick).items()}
        flops = forward_flops_per_image(models["vitlit"], device)
        peak = bf16_peak_tflops(device)
        images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
        labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)

        header = ["compile", "precision", "step", *(f"{name} img/s" for name in models), "vitlit / best other"]
        header += ["vitlit TFLOP/s", "vitlit MFU (bf16 peak)"] if cuda else ["vitlit TFLOP/s"]
        rows = []
        for compiled in compile_options:
            runnable = {
                name: torch.compile(model, dynamic=False) if compiled else model for name, model in models.items()
            }
            skip_bf16 = emulated_bf16(device)
            for precision in [p for p in args.precisions if not (p == "bf16" and skip_bf16)]:
                for mode in args.modes:
                    for model in models.values():
                        model.train(mode == "train")
                    steps = {
                        name: make_step(model, mode, precision, images, labels) for name, model in runnable.items()
                    }
                    seconds = time_interleaved(steps, device, repeats, warmup)
                    throughput = {name: batch / value for name, value in seconds.items()}
                    best_other = max(value for name, value in throughput.items() if name != "vitlit")
                    achieved = throughput["vitlit"] * flops * (3 if mode == "train" else 1) / 1e12
                    row = [
                        "on" if compiled else "off",
                        precision,
                        mode,
                        *(f"{value:.3g}" for value in throughput.values()),
                        f"{throughput['vitlit'] / best_other:.2f}x",
                        f"{achieved:.3g}",
                    ]
                    if cuda:
                        row.append(f"{achieved / peak:.1%}" if peak else "unknown GPU")
                    rows.append(row)
                    print(
                        f"  {device.type} compile={compiled} {precision} {mode}: "
                        + ", ".join(f"{name} {value:.3g} img/s" for name, value in throughput.items()),
                        flush=True,
                    )
                    del steps  # frees the optimisers' state before the next cell
                    for model in models.values():
                        model.zero_grad(set_to_none=True)
        print(f"\nModel step, batch {batch}, median of {repeats} interleaved rounds: {describe_machine(device)}\n")
        print(markdown_table(header, rows))
        print(
            f"vitlit forward: {flops / 1e9:.1f} GFLOP per image (training step counted as 3x); "
            f"{sum(p.numel() for p in models['vitlit'].parameters()):,} parameters"
        )
        for model in models.values():
            model.cpu()
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
