"""Leave with your model: save a vitlit ViT as a torchvision- or timm-compatible safetensors file.

    python -m vitlit.export outputs/train/runs/<run>/checkpoints/last.ckpt vit_timm.safetensors --layout timm

Load the file with ``safetensors.torch.load_file`` and ``load_state_dict`` into
``torchvision.models.vit_b_16(num_classes=C)`` or ``timm.create_model("vit_base_patch16_224", num_classes=C)``
(or the architecture of the same size). The names come from the tables in :mod:`vitlit.models.weight_formats`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from vitlit.models.vit import ViT
from vitlit.models.weight_formats import TIMM, TORCHVISION, CheckpointFormat
from vitlit.models.weights import few_keys

log = logging.getLogger(__name__)

EXPORT_LAYOUTS: dict[str, CheckpointFormat] = {"torchvision": TORCHVISION, "timm": TIMM}


def export_state_dict(model: ViT, layout: str) -> dict[str, torch.Tensor]:
    """The model's weights under torchvision's or timm's names (``layout``), as contiguous CPU tensors."""
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"export layout {layout!r} is not one of: {', '.join(EXPORT_LAYOUTS)}")
    checkpoint_format = EXPORT_LAYOUTS[layout]
    renames = {**checkpoint_format.top, **checkpoint_format.head}
    for index in range(len(model.transformer_encoder)):
        block_prefix = checkpoint_format.block_prefix.format(i=index)
        for ours, theirs in checkpoint_format.block.items():
            renames[f"transformer_encoder.{index}.{ours}"] = block_prefix + theirs
    own = model.state_dict()
    if set(renames) != set(own):
        unnamed = sorted(set(own) - set(renames))
        raise ValueError(f"cannot export to {layout}: model keys without a {layout} name: {few_keys(unnamed)}")
    return {renames[key]: value.detach().cpu().contiguous().clone() for key, value in own.items()}


def export_weights(model: ViT, path: str | os.PathLike, layout: str = "timm") -> Path:
    """Save ``model`` as a ``layout`` (torchvision or timm) ``.safetensors`` file. Never overwrites a file."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the export is a safetensors file; name it *.safetensors")
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new file name (vitlit never overwrites one)")
    state = export_state_dict(model, layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", "layout": layout, "exported_by": "vitlit"})
    log.info("wrote %s (%s layout, %d tensors)", path, layout, len(state))
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m vitlit.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a vitlit Lightning checkpoint (.ckpt)")
    parser.add_argument("output", help="the .safetensors file to write (must not exist)")
    parser.add_argument("--layout", choices=sorted(EXPORT_LAYOUTS), default="timm")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from vitlit.training.checkpoints import classifier_from_checkpoint, read_checkpoint

    output = Path(args.output).expanduser()
    if output.exists():  # checked before the (slow) checkpoint load
        parser.exit(1, f"Error: {output} already exists; choose a new file name (vitlit never overwrites one)\n")
    from vitlit.user_errors import user_errors_as_messages  # imports Lightning: for the command line only

    with user_errors_as_messages():
        module = classifier_from_checkpoint(read_checkpoint(args.checkpoint))
        log.info("classes (output order): %s", ", ".join(module.hparams.class_names))
        return export_weights(module.model, output, args.layout)


if __name__ == "__main__":
    main()
