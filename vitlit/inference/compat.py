"""Checkpoints and configs of earlier vitlit versions: options that were removed or renamed.

A removed option stored at the value that changed nothing is dropped silently; at any other value the
checkpoint was trained with code that no longer exists, and the error names the option and the last
commit that had it. Measured results of the removed options: docs/experiments.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

LAST_COMMIT = "06f6cff"  # the last commit with every option below

# Where the option sat -> {option: the value at which it changed nothing}.
REMOVED = {
    "model": {
        "sam_rho": 0.0,  # sharpness-aware minimisation
        "instance_discrimination_weight": 0.0,  # instance discrimination (with instance_count)
        "relative_localization_pairs": 64,  # now fixed at 64
    },
    "model.net": {
        "stem": "patch",  # conv and shifted_patch stems
        "locality_self_attention": False,
        "mlp_depthwise_conv": False,
        "in_channels": 3,  # images are always RGB
    },
    "data": {"train_index": False},  # instance discrimination's image indices
}
# Training-only options that moved out of the module's hyperparameters: nothing is needed to load a checkpoint.
MOVED_TRAINING_ONLY = ("mixup_alpha", "cutmix_alpha")  # now model.batch_mixing.*
MERGED_DROPOUTS = ("embedding_dropout", "mlp_dropout")  # -> model.net.dropout
RENAMED_KEYS = {
    **{f"model.net.{name}": "model.net.dropout" for name in MERGED_DROPOUTS},
    **{f"model.{name}": f"model.batch_mixing.{name}" for name in MOVED_TRAINING_ONLY},
    "model.grad_checkpointing": "model.net.grad_checkpointing",
}


class RemovedOptionError(ValueError):
    """A checkpoint or config uses an option that vitlit no longer has, at a value that mattered."""


def _drop_removed(section: str, values: dict[str, Any]) -> None:
    for option, harmless in REMOVED[section].items():
        if option in values and values.pop(option) != harmless:
            raise RemovedOptionError(
                f"{section}.{option} was removed from vitlit (docs/experiments.md has its measured results); this "
                f"checkpoint or config sets it to a value other than {harmless!r}. Use vitlit at commit {LAST_COMMIT} "
                f"(git checkout {LAST_COMMIT}), the last that supported it, or drop {section}.{option}."
            )


def upgrade_net(net: Mapping[str, Any]) -> dict[str, Any]:
    """``model.net`` arguments of any vitlit version -> today's :class:`~vitlit.models.vit.ViT` arguments."""
    net = dict(net)
    _drop_removed("model.net", net)
    dropouts = {name: net.pop(name) for name in MERGED_DROPOUTS if name in net}
    if dropouts:
        values = {*dropouts.values(), *([net["dropout"]] if "dropout" in net else [])}
        if len(values) > 1:
            shown = ", ".join(f"model.net.{name}={value}" for name, value in dropouts.items())
            raise RemovedOptionError(
                f"{shown}: vitlit now has one model.net.dropout for both places; set model.net.dropout, or use vitlit "
                f"at commit {LAST_COMMIT} (git checkout {LAST_COMMIT}), the last with separate values."
            )
        net["dropout"] = values.pop()
    return net


def upgrade_module_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` of any vitlit version -> today's :class:`ViTClassifier` arguments."""
    hparams = dict(hparams)
    hparams.pop("instance_count", None)  # meaningful only with instance_discrimination_weight, checked below
    if not hparams.get("relative_localization_weight"):
        hparams.pop("relative_localization_pairs", None)  # unused without the loss
    _drop_removed("model", hparams)
    guidance = hparams.get("locality_guidance")
    if guidance and "epochs" in guidance:  # epochs until 43ecd66, now steps; the guide is trained already
        hparams["locality_guidance"] = {key: value for key, value in guidance.items() if key != "epochs"}
    for option in MOVED_TRAINING_ONLY:
        hparams.pop(option, None)
    net = upgrade_net(hparams.get("net", {}))
    if hparams.pop("grad_checkpointing", False):
        net["grad_checkpointing"] = True
    hparams["net"] = net
    return hparams


def upgrade_data_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``datamodule_hyper_parameters`` of any vitlit version -> today's data module arguments."""
    hparams = dict(hparams)
    _drop_removed("data", hparams)
    return hparams


def upgrade_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A vitlit checkpoint of any version with its hyperparameters upgraded (a shallow copy; tensors shared)."""
    checkpoint = dict(checkpoint)
    checkpoint["hyper_parameters"] = upgrade_module_hparams(checkpoint["hyper_parameters"])
    if checkpoint.get("datamodule_hyper_parameters"):
        checkpoint["datamodule_hyper_parameters"] = upgrade_data_hparams(checkpoint["datamodule_hyper_parameters"])
    return checkpoint


def removed_key_message(overrides: Sequence[str]) -> str | None:
    """What to do about the first command-line override of a renamed or removed key; ``None`` when there is none.

    Hydra would only say that the key "is not in struct".
    """
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        section, _, option = key.rpartition(".")
        if key in RENAMED_KEYS:
            return f"{key} was renamed: use {RENAMED_KEYS[key]} (docs/troubleshooting.md lists every renamed key)"
        if option in REMOVED.get(section, {}):
            return (
                f"{key} was removed from vitlit (docs/experiments.md has its measured results); drop it, or use "
                f"vitlit at commit {LAST_COMMIT} (git checkout {LAST_COMMIT}), the last that supported it"
            )
    return None
