"""The ``README.md`` of an exported model folder: the Hub's metadata block, then what the model is and how it did.

Filled only from what is known: the checkpoint (classes, network, evaluation pre-processing, dataset folder) and,
when the checkpoint sits in its run folder, that run's ``metrics.json`` (final metrics) and ``config.yaml`` (the
resolved config train.py writes; else Hydra's ``.hydra/config.yaml``: the recipe); the run folder's name gives the
date. A field with no source is left out.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vitlit.models.library_folders import Preprocessing
from vitlit.reporting.metrics_file import METRICS_FILE

RUN_CONFIGS = (Path("config.yaml"), Path(".hydra") / "config.yaml")  # resolved first
RUN_FOLDER_TIME = "%Y-%m-%d_%H-%M-%S"  # conf/hydra/default.yaml's run and sweep folder names
# Recipe lines: (label, config key).
RECIPE = (
    ("optimizer", "model.optimizer._target_"),
    ("learning rate", "model.optimizer.lr"),
    ("weight decay", "model.optimizer.weight_decay"),
    ("batch size", "data.batch_size"),
    ("epochs", "trainer.max_epochs"),
    ("steps", "trainer.max_steps"),
    ("label smoothing", "model.label_smoothing"),
    ("started from", "model.weights"),
    ("seed", "seed"),
)
MISSING = object()
POOLING_WORDS = {"token": "classifying the class token", "mean": "classifying the mean patch token"}
METRIC_NAMES = {"test/acc": "Test accuracy", "val/acc_best": "Best validation accuracy", "test/loss": "Test loss"}


@dataclass(frozen=True)
class ModelFacts:
    """What the checkpoint itself says about the model."""

    name: str
    class_names: Sequence[str]
    network: Mapping[str, Any]  # ViT arguments (depth, embed_dim, ...)
    parameters: int
    preprocessing: Preprocessing
    dataset: str | None = None  # the data folder's name


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint sits in (``<run>/checkpoints/x.ckpt``), when it has a ``metrics.json`` or a
    run config; else None."""
    run = Path(checkpoint).resolve().parent.parent
    known = [run / METRICS_FILE, *(run / name for name in RUN_CONFIGS)]
    return run if any(path.is_file() for path in known) else None


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def recipe_value(label: str, value: Any) -> Any:
    """How a recipe line shows a config value (MISSING: not shown)."""
    if label == "started from" and value is None:
        return "random initialisation (model.weights=null)"
    if value is None or (isinstance(value, str) and "${" in value):  # unset, or an unresolved interpolation
        return MISSING
    if label in ("epochs", "steps") and value == -1:  # no limit: the other one ends the run
        return MISSING
    return value.rsplit(".", 1)[-1] if label == "optimizer" else value


def run_facts(run: Path | None) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """(final metrics, recipe lines, date) of a run folder; empty where a file is missing or unreadable."""
    if run is None:
        return {}, {}, None
    metrics: dict[str, float] = {}
    if (run / METRICS_FILE).is_file():
        metrics = json.loads((run / METRICS_FILE).read_text()).get("final", {})
    recipe: dict[str, Any] = {}
    config_file = next((run / name for name in RUN_CONFIGS if (run / name).is_file()), None)
    if config_file is not None:
        config = yaml.safe_load(config_file.read_text()) or {}
        for label, key in RECIPE:
            value = _lookup(config, key)
            shown = MISSING if value is MISSING else recipe_value(label, value)
            if shown is not MISSING:
                recipe[label] = shown
    try:
        date = datetime.datetime.strptime(run.name[:19], RUN_FOLDER_TIME).date().isoformat()
    except ValueError:
        date = None
    return metrics, recipe, date


def metadata(library: str, facts: ModelFacts, metrics: Mapping[str, float]) -> dict[str, Any]:
    """The YAML block the Hub reads (library, pipeline, tags, metrics and a model-index with the test accuracy)."""
    tags = ["image-classification", "vision-transformer", "vitlit"] + (["timm"] if library == "timm" else [])
    block: dict[str, Any] = {"library_name": library, "pipeline_tag": "image-classification", "tags": tags}
    if "test/acc" in metrics:
        block["metrics"] = ["accuracy"]
        dataset = {"name": facts.dataset or "test set", "type": "imagefolder", "split": "test"}
        block["model-index"] = [
            {
                "name": facts.name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": dataset,
                        "metrics": [{"type": "accuracy", "value": round(metrics["test/acc"], 4), "name": "accuracy"}],
                    }
                ],
            }
        ]
    return block


USAGE = {
    "transformers": (
        "```python\nfrom transformers import pipeline\n\n"
        'classify = pipeline("image-classification", model="{repo}")\nclassify("photo.jpg")\n```'
    ),
    "timm": (
        "```python\nimport timm\n\n"
        'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()\n'
        "config = timm.data.resolve_data_config({{}}, model=model)\n"
        "transform = timm.data.create_transform(**config)\n```"
    ),
}


def model_card(library: str, facts: ModelFacts, run: Path | None = None) -> str:
    """The folder's ``README.md`` for ``library`` (transformers or timm)."""
    metrics, recipe, date = run_facts(run)
    net, prep = facts.network, facts.preprocessing
    lines = ["---", yaml.safe_dump(metadata(library, facts, metrics), sort_keys=False).rstrip(), "---", ""]
    lines += [f"# {facts.name}", ""]
    trained = f" on `{facts.dataset}`" if facts.dataset else ""
    lines += [
        f"A Vision Transformer image classifier trained{trained} with vitlit and exported for {library}.",
        "",
        f"**Classes** ({len(facts.class_names)}, in output order): " + ", ".join(facts.class_names),
        "",
        "## Network",
        "",
        f"ViT with {net.get('depth')} blocks, width {net.get('embed_dim')}, {net.get('num_heads')} heads, "
        f"MLP {net.get('mlp_dim')}, {net.get('patch_size')}x{net.get('patch_size')} patches at "
        f"{prep.image_size}x{prep.image_size}, {POOLING_WORDS[net.get('pooling', 'token')]}: {facts.parameters:,} "
        "parameters.",
        "",
        "## Pre-processing",
        "",
        f"Shorter side resized to {prep.resize} ({prep.interpolation}), centre crop {prep.image_size}, "
        f"normalised with mean {list(prep.mean)} and std {list(prep.std)}.",
    ]
    if metrics:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {METRIC_NAMES[key]} | {metrics[key]:.4f} |" for key in METRIC_NAMES if key in metrics]
    if recipe or date:
        lines += ["", "## Training", ""]
        lines += [f"- {label}: {value}" for label, value in recipe.items()]
        lines += [f"- date: {date}"] if date else []
    lines += ["", "## Usage", "", USAGE[library].format(repo="org/name"), ""]
    return "\n".join(lines)
