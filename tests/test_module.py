import functools

import torch

from vitlit.training.module import ViTClassifier

MICRO = dict(embed_dim=64, depth=2, num_heads=4, mlp_dim=128)


def test_freeze_backbone_trains_only_the_head_like_the_reference_feature_extractor():
    module = ViTClassifier(net={}, class_names=["pizza", "steak", "sushi"], freeze_backbone=True)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"model.classifier.head.weight", "model.classifier.head.bias"}
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 2_307
    # Built in eval mode: Lightning restores each submodule's mode after validation instead of calling train().
    assert not module.model.transformer_encoder.training and module.model.classifier.head.training
    module.train()
    assert module.model.classifier.head.training
    assert not module.model.transformer_encoder.training  # no dropout in the frozen feature extractor


def test_weight_decay_skips_biases_norms_and_embeddings():
    module = ViTClassifier(net=MICRO, class_names=["a", "b"])
    decay, no_decay = module.parameter_groups()
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"class_embedding", "position_embedding"}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim <= 1 or names[id(p)].endswith("embedding") for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.model.parameters()))


def test_optimizer_and_scheduler_come_from_the_factories():
    module = ViTClassifier(
        net=MICRO,
        class_names=["a", "b"],
        optimizer=functools.partial(torch.optim.AdamW, lr=0.01, weight_decay=0.3),
    )
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.3, 0.0]
    assert [group["lr"] for group in optimizer.param_groups] == [0.01, 0.01]


def test_predict_step_returns_probabilities_whose_argmax_is_the_logits_argmax():
    torch.manual_seed(0)
    module = ViTClassifier(net=MICRO, class_names=["a", "b", "c"]).eval()
    torch.nn.init.normal_(module.model.classifier.head.weight)
    images = torch.randn(4, 3, 224, 224)
    probabilities = module.predict_step((images, torch.zeros(4, dtype=torch.long)), 0)
    assert probabilities.shape == (4, 3)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(4))
    assert torch.equal(probabilities.argmax(dim=1), module(images).argmax(dim=1))
    assert torch.equal(module.predict_step(images, 0), probabilities)


def test_hyperparameters_hold_what_rebuilding_the_model_needs():
    module = ViTClassifier(net=MICRO, class_names=["a", "b"], optimizer=torch.optim.SGD, label_smoothing=0.1)
    assert module.hparams["class_names"] == ["a", "b"]
    assert module.hparams["net"] == MICRO
    assert "optimizer" not in module.hparams
