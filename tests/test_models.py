"""dmx.models: every registered model through one parametrised test, then the factory's edges."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from dmx.models import MODELS, create_model

NUM_CLASSES = 10

# Smallest inputs that exercise each model: (batch, channels, height, width). Every registered
# model must appear here, so a new entry cannot slip past the shared test.
INPUT_SHAPES: dict[str, list[tuple[int, int, int, int]]] = {
    "small_cnn": [(4, 3, 32, 32), (4, 1, 8, 8)],  # CIFAR and sklearn digits
    "preact_resnet18": [(2, 3, 32, 32)],
    "resnet50": [(2, 3, 32, 32)],
    "inception_resnet_v2": [(2, 3, 75, 75)],  # 75 px is its smallest valid input
}


def test_every_model_has_input_shapes():
    assert set(INPUT_SHAPES) == set(MODELS)


@pytest.mark.parametrize(
    "name, shape",
    [(name, shape) for name in MODELS for shape in INPUT_SHAPES.get(name, [])],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v,
)
def test_model(name, shape):
    torch.manual_seed(0)
    batch, channels = shape[:2]
    model = create_model(name, num_classes=NUM_CLASSES, in_channels=channels)
    assert isinstance(model, nn.Module)
    images = torch.randn(shape)

    # train mode: forward, backward, every parameter receives a finite gradient
    model.train()
    logits = model(images)
    assert logits.shape == (batch, NUM_CLASSES)
    nn.functional.cross_entropy(logits, torch.arange(batch) % NUM_CLASSES).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname

    # eval mode, then the same computation in channels_last memory format
    model.eval()
    with torch.no_grad():
        expected = model(images)
        assert expected.shape == (batch, NUM_CLASSES)
        assert torch.isfinite(expected).all()
        model.to(memory_format=torch.channels_last)
        got = model(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)

    # bf16 autocast on CPU
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(images)
    assert low.shape == (batch, NUM_CLASSES)
    assert torch.isfinite(low.float()).all()


def _preact_resnet18_parameter_count(num_classes: int) -> int:
    """Parameters of the reference's PreResNet.ResNet18, counted from its layout."""
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731  (no bias)
    bn = lambda c: 2 * c  # noqa: E731  (weight + bias)
    total = conv(3, 64, 3) + bn(64)  # stem
    in_planes = 64
    for width, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for block_stride in (stride, 1):
            total += bn(in_planes) + conv(in_planes, width, 3) + bn(width) + conv(width, width, 3)
            if block_stride != 1 or in_planes != width:
                total += conv(in_planes, width, 1)  # shortcut: 1x1 conv, no BN
            in_planes = width
    return total + 512 * num_classes + num_classes  # linear


def test_preact_resnet18_matches_reference_parameter_count():
    model = create_model("preact_resnet18", num_classes=10)
    count = sum(p.numel() for p in model.parameters())
    assert count == _preact_resnet18_parameter_count(10) == 11_171_274
    # the stem is a plain 3x3 conv at full resolution, the last block is not followed by BN
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.stride == (1, 1)
    assert model.linear.in_features == 512


def test_preact_resnet18_other_image_sizes_and_channels():
    model = create_model("preact_resnet18", num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_inception_resnet_v2_parameter_count():
    # 54,383,314 at 50 classes: counted on the reference's InceptionResNetV2(num_classes=50)
    model = create_model("inception_resnet_v2", num_classes=50)
    assert sum(p.numel() for p in model.parameters()) == 54_383_314


def test_small_cnn_is_small():
    model = create_model("small_cnn", num_classes=10)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000


# --------------------------------------------------------------------------- resnet50 weights


def test_resnet50_pretrained_unavailable_raises_clear_error(monkeypatch):
    import torchvision.models

    def offline(**kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models, "resnet50", offline)
    with pytest.raises(RuntimeError, match="IMAGENET1K_V1.*network is unreachable.*checkpoints"):
        create_model("resnet50", num_classes=14, pretrained=True)


def test_resnet50_pretrained_needs_three_channels():
    with pytest.raises(ValueError, match="3 input channels"):
        create_model("resnet50", num_classes=14, in_channels=1, pretrained=True)


# --------------------------------------------------------------------------- import paths

FACTORIES = """
from torch import nn

def make_tiny(num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

def make_tiny_channels(num_classes, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))

def make_tiny_kwargs(**kwargs):
    return make_tiny_channels(**kwargs)

def make_broken(num_classes):
    raise ValueError("width must be positive")

def make_not_a_module(num_classes):
    return "definitely not a network"

NOT_CALLABLE = 3
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A throw-away module of model factories importable as `dmx_test_factories`."""
    (tmp_path / "dmx_test_factories.py").write_text(textwrap.dedent(FACTORIES))
    (tmp_path / "dmx_test_broken_import.py").write_text("import dmx_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "dmx_test_factories"
    for module in ("dmx_test_factories", "dmx_test_broken_import"):
        sys.modules.pop(module, None)


def test_import_path_factory(factories):
    model = create_model(f"{factories}:make_tiny", num_classes=5)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize("factory", ["make_tiny_channels", "make_tiny_kwargs"])
def test_import_path_factory_receives_in_channels(factories, factory):
    model = create_model(f"{factories}:{factory}", num_classes=5, in_channels=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_import_path_factory_without_in_channels_refuses_other_channels(factories):
    with pytest.raises(ValueError, match="in_channels=1"):
        create_model(f"{factories}:make_tiny", num_classes=5, in_channels=1)


@pytest.mark.parametrize(
    "name, error, message",
    [
        ("dmx_no_such_module:make", ImportError, "cannot import module 'dmx_no_such_module'"),
        ("dmx_test_broken_import:make", ImportError, "dmx_no_such_dependency"),
        ("dmx_test_factories:make_missing", AttributeError, "no attribute 'make_missing'"),
        ("dmx_test_factories:NOT_CALLABLE", TypeError, "not callable"),
        ("dmx_test_factories:make_broken", RuntimeError, "ValueError: width must be positive"),
        ("dmx_test_factories:make_not_a_module", TypeError, "returned str, not a torch.nn.Module"),
        (":make", ValueError, "pkg.module:factory"),
    ],
)
def test_import_path_errors(factories, name, error, message):
    with pytest.raises(error, match=message):
        create_model(name, num_classes=5)


def test_unknown_name_lists_known_models_and_import_form():
    with pytest.raises(ValueError, match="unknown model 'resnet18'") as info:
        create_model("resnet18", num_classes=10)
    for name in MODELS:
        assert name in str(info.value)
    assert "pkg.module:factory" in str(info.value)
