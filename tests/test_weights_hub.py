"""load_pretrained("hf-hub:org/name"): weights through huggingface_hub's own download code and cache.

No network here: each test fills a temporary Hugging Face cache in the hub's layout (models--org--name/
snapshots/<commit>/, refs/<branch or tag> holding the commit) and runs offline, as HF_HUB_OFFLINE=1 would.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_weights import hf_logits, images, max_diff, perturbed, tiny_hf_config, tiny_timm, tiny_vit

from vitlit import load_pretrained
from vitlit.models.weight_downloads import WeightsNotFoundError
from vitlit.models.weights import read_weight_file

huggingface_hub = pytest.importorskip("huggingface_hub")
transformers = pytest.importorskip("transformers")
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402

TOLERANCE = 1e-5
MAIN_COMMIT = "a" * 40
OTHER_COMMIT = "b" * 40


@pytest.fixture
def offline_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline. huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE into
    ``huggingface_hub.constants`` when first imported and its download code reads those constants on each
    call, so both the variables (for anything that reads them later) and the constants are set."""
    cache = tmp_path / "huggingface" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "huggingface"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_snapshot(cache: Path, repo_id: str, commit: str = MAIN_COMMIT, ref: str | None = "main") -> Path:
    """The snapshot folder of ``repo_id`` at ``commit`` in the hub cache, with ``refs/<ref>`` pointing at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@torch.no_grad()
def test_hf_hub_timm_name_loads_the_cached_timm_weights(offline_hub_cache: Path, caplog: pytest.LogCaptureFixture):
    source = perturbed(tiny_timm())
    repo_id = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    save_file(source.state_dict(), cache_snapshot(offline_hub_cache, repo_id) / "model.safetensors")
    model = tiny_vit()
    with caplog.at_level(logging.INFO, logger="vitlit.models"):
        loaded = load_pretrained(model, f"hf-hub:{repo_id}", load_head=True)
    assert (loaded.source, loaded.format, loaded.head_loaded) == (f"hf-hub:{repo_id}", "timm", True)
    assert f"snapshots/{MAIN_COMMIT}/model.safetensors" in caplog.text  # where it was read from
    assert max_diff(model(images(32)), source(images(32))) <= TOLERANCE


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
@torch.no_grad()
def test_hf_hub_google_name_loads_the_cached_transformers_weights(offline_hub_cache: Path, filename: str):
    source = perturbed(transformers.ViTForImageClassification(tiny_hf_config()))
    snapshot = cache_snapshot(offline_hub_cache, "google/vit-base-patch16-224")
    source.save_pretrained(snapshot)  # model.safetensors (4.x names, as the hub's files) and config.json
    if filename == "pytorch_model.bin":  # older repositories hold only the pickle-free torch file
        state = read_weight_file(snapshot / "model.safetensors")
        (snapshot / "model.safetensors").unlink()
        torch.save(state, snapshot / filename)
    model = tiny_vit()
    loaded = load_pretrained(model, "hf-hub:google/vit-base-patch16-224", load_head=True)
    assert loaded.format == "huggingface (4.x names)"
    assert max_diff(model(images(32)), hf_logits(source, images(32))) <= TOLERANCE


@pytest.mark.parametrize("revision", [OTHER_COMMIT, "v1.0"])
@torch.no_grad()
def test_hf_hub_name_at_a_revision_loads_that_revision(offline_hub_cache: Path, revision: str):
    repo_id = "timm/vit_tiny_test"
    main, other = perturbed(tiny_timm(), seed=1), perturbed(tiny_timm(), seed=2)
    save_file(main.state_dict(), cache_snapshot(offline_hub_cache, repo_id) / "model.safetensors")
    tag = None if revision == OTHER_COMMIT else revision
    save_file(other.state_dict(), cache_snapshot(offline_hub_cache, repo_id, OTHER_COMMIT, tag) / "model.safetensors")
    model = tiny_vit()
    load_pretrained(model, f"hf-hub:{repo_id}@{revision}", load_head=True)
    assert max_diff(model(images(32)), other(images(32))) <= TOLERANCE


def test_hf_hub_cache_miss_offline_is_one_error_saying_what_to_do(offline_hub_cache: Path):
    repo_id = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    with pytest.raises(WeightsNotFoundError) as raised:
        load_pretrained(tiny_vit(), f"hf-hub:{repo_id}")
    assert isinstance(raised.value, FileNotFoundError)  # train.py prints it without a traceback
    message = str(raised.value)
    for part in (
        f"hf-hub:{repo_id}: model.safetensors or pytorch_model.bin of {repo_id} is not in the Hugging Face cache",
        f"({offline_hub_cache})",
        "could not be downloaded: offline mode is on (HF_HUB_OFFLINE=1)",
        "model.weights=/path/to/model.safetensors",
        "model.weights=null",
    ):
        assert part in message


def test_without_huggingface_hub_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # what an import of a missing package meets
    with pytest.raises(
        ModuleNotFoundError, match=r"huggingface_hub, which is not installed: pip install huggingface_hub"
    ):
        load_pretrained(tiny_vit(), "hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")


@pytest.mark.parametrize(
    "name", ["hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "hf-hub:google/vit-base-patch16-224@main"]
)
def test_hf_hub_names_pass_through_a_hydra_override_unchanged(name: str):
    assert OverridesParser.create().parse_override(f"model.weights={name}").value() == name
