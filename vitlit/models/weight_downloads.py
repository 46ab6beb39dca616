"""Weights by name, from their library's own cache or downloaded into it: ``torchvision:NAME`` through torchvision
(``$TORCH_HOME/hub/checkpoints``) and ``hf-hub:org/name[@revision]`` through huggingface_hub (``HF_HUB_CACHE``).

Offline, a miss is one error that names the file, where it was looked for, where it comes from and what to do.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vitlit.models.weight_formats import TORCHVISION_ARCHITECTURES

if TYPE_CHECKING:
    from vitlit.models.vit import ViT

log = logging.getLogger(__name__)

HF_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"  # a transformers or timm folder's configuration, with the class names
HUB_PREFIX = "hf-hub:"


class WeightsNotFoundError(FileNotFoundError):
    """Named weights that are not in their library's cache and could not be downloaded."""


def torchvision_weights(name: str, patch_size: int, width: int, depth: int):
    """torchvision's weights enum member ``name`` (e.g. ``IMAGENET1K_V1``) of the ViT with this patch size,
    width and depth (``ViT_B_16_Weights.IMAGENET1K_V1`` for ViT-B/16). Nothing is downloaded here."""
    from torchvision.models import get_model_weights

    architecture = TORCHVISION_ARCHITECTURES.get((patch_size, width, depth))
    if architecture is None:
        raise ValueError(
            f"torchvision has no ViT with patch {patch_size}, width {width} and depth {depth}; "
            f"it has {', '.join(TORCHVISION_ARCHITECTURES.values())}"
        )
    weights_enum = get_model_weights(architecture)
    try:
        return weights_enum[name]
    except KeyError:
        choices = ", ".join(member.name for member in weights_enum)
        raise ValueError(f"torchvision:{name} is not a weight of {architecture}; choose one of {choices}") from None


def torchvision_state_dict(name: str, model: ViT) -> dict[str, torch.Tensor]:
    """Download (or read from torchvision's cache, ``$TORCH_HOME/hub/checkpoints``) the weights ``name`` of
    the torchvision ViT shaped like ``model``."""
    width = model.classifier.norm.normalized_shape[0]
    weights = torchvision_weights(name, model.patch_size, width, len(model.transformer_encoder))
    log.info("torchvision weights %s (%s), ImageNet-1k acc@1 %s", weights, weights.url, _acc1(weights))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:  # no network, no proxy, DNS, ...
        raise WeightsNotFoundError(
            f"torchvision:{name}: {cached.name} is not in torch's cache ({cached}) and could not be downloaded "
            f"from {weights.url} ({getattr(error, 'reason', error)}). Download it there with a network (the file "
            f"name must stay {cached.name}), or load a copy you have with model.weights=/path/to/{cached.name}, or "
            "train from scratch with model.weights=null."
        ) from None


def _acc1(weights) -> str:
    metrics = weights.meta.get("_metrics", {})
    return str(next(iter(metrics.values()), {}).get("acc@1", "?"))


def hub_checkpoint_path(name: str) -> Path:
    """The local path of the weights of Hugging Face Hub repository ``name`` (``org/repo``, or ``org/repo@revision``
    for a branch, tag or commit): ``model.safetensors``, else ``pytorch_model.bin``, downloaded by
    ``huggingface_hub.hf_hub_download`` into its cache (``HF_HUB_CACHE``) or found there (``HF_HUB_OFFLINE=1``).

    Raises:
        WeightsNotFoundError: neither file is cached and neither can be downloaded (offline, no network).
        ValueError: no such repository or revision, or a repository that holds neither file.
        ModuleNotFoundError: huggingface_hub is not installed.
    """
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as error:
        raise ModuleNotFoundError(
            f"{HUB_PREFIX}{name} downloads through huggingface_hub, which is not installed: "
            "pip install huggingface_hub (or pip install 'vitlit[hub]')"
        ) from error
    repo_id, _, revision = name.partition("@")
    unreachable = []
    for filename in HF_FILES:
        try:
            # Once the network has failed, look only in the cache: each try would wait out the same retries.
            local = hf_hub_download(repo_id, filename, revision=revision or None, local_files_only=bool(unreachable))
            log.info("%s%s: %s", HUB_PREFIX, name, local)
            try:  # beside the weights: the class names (load_pretrained's class_names); optional
                hf_hub_download(repo_id, CONFIG_FILE, revision=revision or None, local_files_only=bool(unreachable))
            except (EntryNotFoundError, ConnectionError, OSError):
                log.debug("%s%s has no %s", HUB_PREFIX, name, CONFIG_FILE)
            return Path(local)
        except (LocalEntryNotFoundError, ConnectionError):  # before EntryNotFoundError, its base class
            unreachable.append(filename)
        except EntryNotFoundError:
            continue  # the repository has no such file: try the next name
        except (RepositoryNotFoundError, RevisionNotFoundError) as error:
            raise ValueError(
                f"{HUB_PREFIX}{name}: the Hugging Face Hub has no repository {repo_id!r} at revision "
                f"{revision or 'main'} that you can read (a private or gated one needs HF_TOKEN)"
            ) from error
    if not unreachable:
        raise ValueError(
            f"{HUB_PREFIX}{name}: the repository holds neither {' nor '.join(HF_FILES)}; vitlit reads timm and "
            "Hugging Face transformers ViT repositories"
        )
    why = (
        "offline mode is on (HF_HUB_OFFLINE=1)"
        if constants.HF_HUB_OFFLINE
        else "the Hub could not be reached (no network)"
    )
    raise WeightsNotFoundError(
        f"{HUB_PREFIX}{name}: {' or '.join(unreachable)} of {repo_id} is not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and could not be downloaded: {why}. Run once with a network to fill the "
        f"cache, or load a copy you have with model.weights=/path/to/{unreachable[0]}, or train from scratch "
        "with model.weights=null."
    )
