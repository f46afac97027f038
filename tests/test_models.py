"""flowtriton.models: shapes, sizes of the paper's architectures, the registry's errors."""

from __future__ import annotations

import pytest
import torch

from flowtriton.models import VGG, build_model, list_models


@pytest.mark.parametrize("name,channels,size", [("tiny-cnn", 1, 28), ("small-cnn", 1, 28), ("small-cnn", 3, 32),
                                                ("vgg11", 3, 32), ("vgg16", 1, 32), ("resnet18", 3, 32)])
def test_logits_shape_and_gradient(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels)
    x = torch.rand(2, channels, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


# Conv + BN + Linear(512, 10) parameter counts of the CIFAR VGGs with BatchNorm.
@pytest.mark.parametrize("name,params", [("vgg11", 9_231_114), ("vgg13", 9_416_010), ("vgg16", 14_728_266),
                                         ("vgg19", 20_040_522)])
def test_vgg_sizes_match_the_cifar_architecture(name, params):
    model = build_model(name, 10, 3)
    assert sum(p.numel() for p in model.parameters()) == params
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(bns) == {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}[name]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert model.classifier.in_features == 512


def test_resnet18_size():
    assert sum(p.numel() for p in build_model("resnet18", 10, 3).parameters()) == 11_173_962


def test_registry_lists_and_rejects():
    assert {"small-cnn", "vgg11", "vgg19", "resnet18"} <= set(list_models())
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("vgg12")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("vgg11", num_classes=0)
    with pytest.raises(ValueError, match="depth"):
        VGG("vgg7")


def test_width_scaled_vgg_by_registry_name():
    from flowtriton.models import VGG, build_model

    narrow = build_model("vgg11-w0.25", num_classes=10, in_channels=3)
    assert isinstance(narrow, VGG) and narrow.classifier.in_features == 128
    assert narrow(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    full = sum(p.numel() for p in build_model("vgg11").parameters())
    assert sum(p.numel() for p in narrow.parameters()) < full / 10
    with pytest.raises(ValueError, match="vgg<depth>-w<width>"):
        build_model("vgg12-w0.5")
    with pytest.raises(ValueError, match="width must be > 0"):
        VGG("vgg11", width=0.0)
