"""What a training step of ``experiment=scratch`` costs at each resolution (LowResolutionTraining's trade), and
with ``--locality-guidance`` what the guide adds: the guided step at each size and one training step of the guide.

Times one optimiser step of the preset's model (forward with the localisation loss, backward, AdamW) on a
batch of 16, at every size in turn inside each round (interleaved: a busy machine slows all alike), and
the data pipeline's work per batch (random resized crop at 224, TrivialAugment, erasing: the same at every
training resolution, since the batch is downsampled on the device). Run it as an AVX2-only CPU would with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``.

    python -m benchmarks.low_resolution --sizes 224 160 128 112 --precision 32
    python -m benchmarks.low_resolution --sizes 224 112 --locality-guidance "{weight: 2.5, steps: 1400}"
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from benchmarks.timing import describe_machine, markdown_table, time_interleaved
from vitlit.configs import CONFIG_DIR
from vitlit.data.transforms import train_transform
from vitlit.models.layers import resized_square


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 160, 128])
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--locality-guidance", help="model.locality_guidance settings to time beside the preset's")
    args = parser.parse_args()
    overrides = ["experiment=scratch", "model.locality_guidance=null"]
    if args.locality_guidance:
        overrides.append(f"+guided={args.locality_guidance}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    modules = {"": instantiate(cfg.model, class_names=["a", "b", "c"], _convert_="all").train()}
    if args.locality_guidance:
        guided = instantiate(cfg.model, class_names=["a", "b", "c"], locality_guidance=cfg.guided, _convert_="all")
        modules[", guided"] = guided.train()
    optimizers = {name: torch.optim.AdamW(module.parameters(), lr=1e-4) for name, module in modules.items()}
    batch = torch.randn(16, 3, 224, 224)
    labels = torch.randint(0, 3, (16,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()

    def step(size: int, name: str = "") -> None:
        images = batch if size == 224 else F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
        with autocast:
            _, loss = modules[name]._loss_with_auxiliaries(images, labels)
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    def guide_step() -> None:  # what LocalityGuidance.fit_guide does per batch, before the ViT's first step
        guidance = modules[", guided"].locality_guidance
        guide = guidance.guide.requires_grad_(True).train()
        with autocast:
            loss = F.cross_entropy(guide(resized_square(batch, guidance.size)).float(), labels)
        loss.backward()
        guide.zero_grad(set_to_none=True)

    pictures = [torch.randint(0, 256, (3, 384, 512), dtype=torch.uint8) for _ in range(16)]
    augment = train_transform(224, (0.35, 1.0), auto_augment="trivialaugment", normalize=False, random_erasing=0.25)
    candidates = {f"step at {s}{n}": (lambda s=s, n=n: step(s, n)) for n in modules for s in args.sizes}
    if args.locality_guidance:
        candidates["guide training step"] = guide_step
    candidates["data, 16 images"] = lambda: torch.stack([augment(picture) for picture in pictures])
    seconds = time_interleaved(candidates, torch.device("cpu"), args.repeats, warmup=2)
    reference = seconds[f"step at {args.sizes[0]}"]
    rows = [[name, f"{value:.3f}", f"{value / reference:.2f}"] for name, value in seconds.items()]
    print(describe_machine(torch.device("cpu")), f"precision {args.precision}")
    print(markdown_table(["what", "median s", f"vs step at {args.sizes[0]}"], rows))


if __name__ == "__main__":
    main()
