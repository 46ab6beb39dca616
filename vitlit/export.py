"""Leave with your model: a torchvision- or timm-compatible safetensors file, or an ONNX graph for serving.

    python -m vitlit.export outputs/train/runs/<run>/checkpoints/last.ckpt vit_timm.safetensors --layout timm
    python -m vitlit.export outputs/train/runs/<run>/checkpoints/last.ckpt vit.onnx [--float-input]
    python -m vitlit.export outputs/train/runs/<run>/checkpoints/last.ckpt my_model/ --layout transformers  (or timm)

A folder target (:mod:`vitlit.export_folder`) is what ``transformers.pipeline(model=...)`` or
``timm.create_model("local-dir:...")`` opens by itself, with a model card; ``hf upload org/name my_model/`` shares it.

Load the safetensors file with ``safetensors.torch.load_file`` and ``load_state_dict`` into
``torchvision.models.vit_b_16(num_classes=C)`` or ``timm.create_model("vit_base_patch16_224", num_classes=C)``
(or the architecture of the same size). The names come from the tables in :mod:`vitlit.models.weight_formats`.

The ONNX graph (``pip install "vitlit[onnx]"``) is the evaluation forward pass with the normalisation built in:
``images`` (N, 3, S, S) uint8 RGB (or float32 in [0, 1] with ``--float-input``) -> ``logits`` (N, classes), any N.
Resizing and cropping to S (``image_size`` in the file's metadata) is the caller's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_fractions
from vitlit.export_folder import export_folder, writes_folder
from vitlit.inference.checkpoint import (
    checkpoint_class_names,
    eval_transform_settings,
    network_from_checkpoint,
    read_checkpoint,
)
from vitlit.inference.predictor import average_logits, normalize
from vitlit.models.vit import ViT
from vitlit.models.weight_formats import TIMM, TORCHVISION, CheckpointFormat
from vitlit.models.weights import few_keys
from vitlit.reporting.atomic_files import written_atomically
from vitlit.user_errors import user_errors_as_messages

log = logging.getLogger(__name__)

EXPORT_LAYOUTS: dict[str, CheckpointFormat] = {"torchvision": TORCHVISION, "timm": TIMM}
EXPORT_FORMATS = ("safetensors", "onnx")
ONNX_PACKAGES = ("onnx", "onnxscript")  # torch.onnx.export(dynamo=True) needs both
ONNX_SINGLE_FILE_BYTES = 2**31 - 2**26  # protobuf's 2 GiB limit, with room for the graph: larger weights go beside it


def check_layout_fits(model: ViT, layout: str) -> None:
    """Refuse an architecture the ``layout`` library cannot hold under its plain names.

    Sine-cosine positions (``position_embedding=sincos``) are fine: they are values, saved in the learned slot.
    Mean pooling is not: torchvision always reads the class token, and timm builds it as
    ``global_pool="avg"``, whose final norm is ``fc_norm`` (applied after pooling) instead of ``norm``.
    """
    if model.pooling == "token":
        return
    hint = {
        "torchvision": "torchvision's VisionTransformer always classifies the class token",
        "timm": 'timm holds it as timm.create_model(..., global_pool="avg"), whose norm after pooling is named fc_norm',
    }[layout]
    raise ValueError(
        f"cannot export model.net.pooling={model.pooling} to the {layout} layout: {hint}. Export it with "
        "--format onnx, or train with model.net.pooling=token"
    )


def export_state_dict(model: ViT, layout: str) -> dict[str, torch.Tensor]:
    """The model's weights under torchvision's or timm's names (``layout``), as contiguous CPU tensors."""
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"export layout {layout!r} is not one of: {', '.join(EXPORT_LAYOUTS)}")
    check_layout_fits(model, layout)
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
    metadata = {"format": "pt", "layout": layout, "exported_by": "vitlit"}
    with written_atomically(path, overwrite=False) as temporary:  # through Python: a full disk is an OSError
        temporary.write_bytes(safetensors.torch.save(state, metadata=metadata))
    log.info("wrote %s (%s layout, %d tensors)", path, layout, len(state))
    return path


class ServingGraph(nn.Module):
    """What the ONNX file computes: images (N, 3, S, S) uint8 in [0, 255] (``float_input``: float in [0, 1])
    -> logits (N, classes), normalised with the checkpoint's mean/std, mirror-averaged when it tests that way
    (``model.test_time_flip``): :func:`vitlit.inference.predictor.normalize` and ``average_logits``, as evaluation
    and prediction compute them. A checkpoint evaluated on several views averages the logits of one call per view.
    """

    def __init__(
        self, model: ViT, mean: torch.Tensor, std: torch.Tensor, float_input: bool = False, flip: bool = False
    ):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", mean.detach().float().reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", std.detach().float().reshape(1, -1, 1, 1).clone())
        self.float_input = float_input
        self.flip = flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.float() - self.mean) / self.std if self.float_input else normalize(images, self.mean, self.std)
        return average_logits(self.model, pixels, self.flip)


def export_onnx(graph: ServingGraph, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``graph`` as an ONNX file with a dynamic batch dimension (``torch.onnx.export``'s torch.export-based
    exporter). ``metadata`` (class names, image size, ...) goes into the file's metadata_props, as JSON values.
    Never overwrites a file."""
    path = Path(path).expanduser()
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the export is an ONNX file; name it *.onnx")
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new file name (vitlit never overwrites one)")
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"ONNX export needs {' and '.join(missing)}: pip install 'vitlit[onnx]'")
    side = graph.model.image_size
    shape = (2, 3, side, side)
    example = torch.rand(shape) if graph.float_input else torch.randint(0, 256, shape, dtype=torch.uint8)
    with torch.no_grad():
        program = torch.onnx.export(
            graph.eval(),
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    program.model.metadata_props.update({key: json.dumps(value) for key, value in (metadata or {}).items()})
    weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in graph.state_dict().values())
    with written_atomically(path, overwrite=False) as temporary:
        program.save(temporary, external_data=weight_bytes > ONNX_SINGLE_FILE_BYTES)
    kind = "float32 in [0, 1]" if graph.float_input else "uint8"
    log.info("wrote %s (%.1f MB; input: images (N, 3, %d, %d) %s)", path, path.stat().st_size / 1e6, side, side, kind)
    return path


def onnxruntime_difference(path: str | os.PathLike, graph: ServingGraph, batch_sizes: Sequence[int] = (1, 3)) -> float:
    """The largest |logit difference| between onnxruntime running ``path`` and PyTorch running ``graph``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    side, worst = graph.model.image_size, 0.0
    generator = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        images = torch.randint(0, 256, (batch, 3, side, side), generator=generator, dtype=torch.uint8)
        images = images.float() / 255.0 if graph.float_input else images
        (logits,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            worst = max(worst, (torch.from_numpy(logits) - graph(images)).abs().max().item())
    return worst


def serving_metadata(checkpoint: Mapping[str, Any], graph: ServingGraph) -> dict[str, Any]:
    """What a server needs beside the graph: class names in output order and how the evaluation prepared images
    (resize the shorter side to ``resize``, centre-crop ``image_size``; a checkpoint evaluated on several crops
    lists a ``resize`` per view, whose logits it averaged)."""
    settings = eval_transform_settings(checkpoint)
    side = graph.model.image_size
    resize = [round(side / fraction) for fraction in crop_fractions(settings.get("eval_crop_fraction", 0.875))]
    return {
        "class_names": list(checkpoint_class_names(checkpoint)),
        "image_size": side,
        "input": f"images (N, 3, {side}, {side}) " + ("float32 RGB in [0, 1]" if graph.float_input else "uint8 RGB"),
        "resize": resize[0] if len(resize) == 1 else resize,
        "interpolation": settings.get("interpolation", "bilinear"),
        # JPEGs decoded at a reduced scale first (PIL's Image.draft(None, (n, n))), as evaluation did; null: full size
        "jpeg_draft_size": max(resize) if settings["fast_decode"] else None,
        "mean": [round(float(value), 6) for value in graph.mean.flatten()],  # float32 buffers: 0.485, not 0.48500001
        "std": [round(float(value), 6) for value in graph.std.flatten()],
        "test_time_flip": graph.flip,
    }


def output_format(output: Path, requested: str | None) -> str:
    """``--format``, or the output's suffix when not given (``.onnx`` -> onnx, else safetensors)."""
    return requested or ("onnx" if output.suffix == ".onnx" else "safetensors")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m vitlit.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a vitlit Lightning checkpoint (.ckpt)")
    parser.add_argument("output", help="the .safetensors or .onnx file to write (must not exist)")
    parser.add_argument(
        "--format", choices=EXPORT_FORMATS, default=None, help="default: onnx for a .onnx output, else safetensors"
    )
    parser.add_argument(
        "--layout",
        choices=sorted([*EXPORT_LAYOUTS, "transformers"]),
        default=None,
        help="safetensors names (timm); transformers, or timm with a folder target: a folder the library opens",
    )
    parser.add_argument("--float-input", action="store_true", help="onnx: float32 images in [0, 1] instead of uint8")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    output = Path(args.output).expanduser()
    export_format = output_format(output, args.format)
    if export_format == "onnx" and args.layout:
        parser.error("--layout names safetensors weights; an ONNX graph has no layout")
    if args.layout == "transformers" and output.suffix in (".safetensors", ".onnx"):
        parser.error("--layout transformers writes a folder: name one, e.g. my_model/")
    if export_format == "safetensors" and args.float_input:
        parser.error("--float-input is for --format onnx")
    if output.exists():  # checked before the (slow) checkpoint load
        parser.exit(1, f"Error: {output} already exists; choose a new file name (vitlit never overwrites one)\n")
    with user_errors_as_messages():
        checkpoint = read_checkpoint(args.checkpoint)
        network = network_from_checkpoint(checkpoint)
        log.info("classes (output order): %s", ", ".join(checkpoint_class_names(checkpoint)))
        if export_format == "safetensors" and writes_folder(output, args.layout):
            path = export_folder(args.checkpoint, checkpoint, network, output, args.layout)
            log.info("wrote %s (%s layout): %s", path, args.layout, ", ".join(sorted(p.name for p in path.iterdir())))
            return path
        if export_format == "safetensors":
            return export_weights(network, output, args.layout or "timm")
        hparams = checkpoint["hyper_parameters"]
        mean, std = torch.tensor(hparams.get("mean", IMAGENET_MEAN)), torch.tensor(hparams.get("std", IMAGENET_STD))
        graph = ServingGraph(network, mean, std, args.float_input, bool(hparams.get("test_time_flip", False)))
        try:
            path = export_onnx(graph, output, serving_metadata(checkpoint, graph))
        except ModuleNotFoundError as error:
            parser.exit(1, f"Error: {error}\n")
        if importlib.util.find_spec("onnxruntime") is not None:
            log.info(
                "onnxruntime check, batches of 1 and 3: max |logit difference| %.2e",
                onnxruntime_difference(path, graph),
            )
        return path


def command_line() -> None:
    """The ``vitlit-export`` command: ``main`` without its return value, which a console script would exit with."""
    main()


if __name__ == "__main__":
    main()
