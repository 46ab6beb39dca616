"""What a training step of ``experiment=scratch`` costs at each resolution (LowResolutionTraining's trade).

Times one optimiser step of the preset's model (forward with the localisation loss, backward, AdamW) on a
batch of 16, at every size in turn inside each round (interleaved: a busy machine slows all alike), and
the data pipeline's work per batch (random resized crop at 224, TrivialAugment, erasing: the same at every
training resolution, since the batch is downsampled on the device). Run it as an AVX2-only CPU would with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``.

    python -m benchmarks.low_resolution --sizes 224 160 128 112 --precision 32
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 160, 128])
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=scratch"])
    torch.manual_seed(0)
    module = instantiate(cfg.model, class_names=["a", "b", "c"], _convert_="all")
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    batch = torch.randn(16, 3, 224, 224)
    labels = torch.randint(0, 3, (16,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()

    def step(size: int) -> None:
        images = batch if size == 224 else F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
        with autocast:
            _, loss = module._loss_with_relative_localization(images, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    pictures = [torch.randint(0, 256, (3, 384, 512), dtype=torch.uint8) for _ in range(16)]
    augment = train_transform(224, (0.35, 1.0), auto_augment="trivialaugment", normalize=False, random_erasing=0.25)
    candidates = {f"step at {size}": (lambda size=size: step(size)) for size in args.sizes}
    candidates["data, 16 images"] = lambda: torch.stack([augment(picture) for picture in pictures])
    seconds = time_interleaved(candidates, torch.device("cpu"), args.repeats, warmup=2)
    reference = seconds[f"step at {args.sizes[0]}"]
    rows = [[name, f"{value:.3f}", f"{value / reference:.2f}"] for name, value in seconds.items()]
    print(describe_machine(torch.device("cpu")), f"precision {args.precision}")
    print(markdown_table(["what", "median s", f"vs step at {args.sizes[0]}"], rows))


if __name__ == "__main__":
    main()
