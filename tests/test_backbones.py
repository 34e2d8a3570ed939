"""dmx.models' torchvision backbones (`torchvision:NAME[.WEIGHTS]`): every family builds with the
run's head, pretrained weights come from the torch hub cache (fake files written here: no test
downloads anything), offline errors name the file's path, unknown names get close matches, and
the input size follows the weights' transforms."""

from __future__ import annotations

import os
import warnings
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from dmx.models import (
    MODELS,
    PretrainedWeightsError,
    available_models,
    create_model,
    input_size,
    torchvision_models,
)
from dmx.models.backbones import classifier_head

NUM_CLASSES = 7
slow = pytest.mark.slow

# (name, input side, options): one or more members of each torchvision family, at the smallest
# input that exercises it. Building the large transformers on two CPU cores takes seconds: slow.
FAMILIES = [
    ("resnet18", 32, {}),
    ("resnet50", 32, {}),
    ("mobilenet_v3_small", 32, {}),
    ("mobilenet_v3_large", 32, {}),
    ("squeezenet1_1", 32, {}),  # the head is a 1x1 conv
    ("shufflenet_v2_x0_5", 32, {}),
    ("mnasnet0_5", 32, {}),
    ("regnet_y_400mf", 32, {}),
    ("efficientnet_b0", 32, {}),
    ("googlenet", 32, {}),  # auxiliary classifiers dropped
    ("densenet121", 32, {}),
    ("inception_v3", 75, {}),  # auxiliary classifier dropped; 75 px is its smallest input
    pytest.param("convnext_tiny", 32, {}, marks=slow),
    pytest.param("swin_t", 64, {}, marks=slow),
    pytest.param("vit_b_16", 32, {"image_size": 32}, marks=slow),  # builder option: 2x2 patches
    pytest.param("maxvit_t", 224, {}, marks=slow),  # its partitions need 224 px
    pytest.param("alexnet", 63, {}, marks=slow),
]


def _perturb(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """model's state with every float tensor (BN statistics too) moved off its init, a little
    (outputs stay finite)."""
    torch.manual_seed(seed)
    state = model.state_dict()
    with torch.no_grad():
        for tensor in state.values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.rand_like(tensor))
    return state


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("name, side, options", FAMILIES)
def test_torchvision_family_builds_with_the_runs_head(name, side, options):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. googlenet's init_weights FutureWarning
        model = create_model(f"torchvision:{name}", num_classes=NUM_CLASSES, **options)
    images = torch.randn(2, 3, side, side)
    model.train()
    logits = model(images)  # a tensor, not googlenet's / inception's namedtuple of aux outputs
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (2, NUM_CLASSES)
    _, head = classifier_head(model, NUM_CLASSES)
    assert getattr(head, "out_features", getattr(head, "out_channels", None)) == NUM_CLASSES


@pytest.mark.parametrize(
    "name", ["resnet18", "squeezenet1_1", "regnet_y_400mf", "googlenet", "efficientnet_b0"]
)
def test_other_channel_counts_get_a_fresh_stem_when_training_from_scratch(name):
    model = create_model(f"torchvision:{name}", num_classes=NUM_CLASSES, in_channels=1)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, NUM_CLASSES)


def test_aux_logits_are_refused():
    with pytest.raises(ValueError, match="aux_logits=True is not supported"):
        create_model("torchvision:googlenet", num_classes=3, aux_logits=True)


@slow
def test_head_rule_holds_for_every_torchvision_classifier():
    """The head rule (the last module with parameters of its own) names exactly the parameters
    whose shape depends on num_classes, in every torchvision classification model (built on the
    meta device: no memory, no init cost; RegNet cannot be, so two are built on the CPU)."""
    checked, names = [], torchvision_models()
    for name in names:
        on_meta = not name.startswith("regnet_")
        if not on_meta and name not in ("regnet_x_400mf", "regnet_y_400mf"):
            continue  # the same RegNet class as the two built
        with torch.device("meta" if on_meta else "cpu"):
            two, three = (
                create_model(f"torchvision:{name}", num_classes=k, in_channels=1) for k in (2, 3)
            )
        s2, s3 = two.state_dict(), three.state_dict()
        depends = {k for k in s2 if s2[k].shape != s3[k].shape}
        head_name, _ = classifier_head(two, 2)
        assert {k for k in s2 if k.rpartition(".")[0] == head_name} == depends, name
        stem = next(m for m in two.modules() if isinstance(m, nn.Conv2d))
        assert stem.in_channels == 1, name
        checked.append(name)
    regnets = [n for n in names if n.startswith("regnet_")]
    assert len(checked) == len(names) - len(regnets) + 2


# --------------------------------------------------------------------------- pretrained weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME and no network: every download attempt is recorded and fails."""
    attempts = []

    def no_download(url, dst, *args, **kwargs):
        attempts.append(url)
        raise OSError("network is unreachable (test)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch" / "hub" / "checkpoints", attempts


def _cache_file(name: str, weights: str = "DEFAULT"):
    url = get_model_weights(name)[weights].url
    return url, os.path.basename(urlparse(url).path)


def _write_fake_weights(checkpoints, name: str) -> dict[str, torch.Tensor]:
    """A torchvision `name` for ImageNet's 1000 classes, its every tensor perturbed, saved as a
    state_dict under the file name torchvision's DEFAULT weights have in the hub cache."""
    aux = (
        {"aux_logits": True, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    )
    state = _perturb(get_model(name, weights=None, num_classes=1000, **aux), seed=1)
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / _cache_file(name)[1])
    return state


PRETRAINED = [
    ("squeezenet1_1", "classifier.1"),
    ("mobilenet_v3_small", "classifier.3"),
    ("regnet_y_400mf", "fc"),
    ("efficientnet_b0", "classifier.1"),
    ("googlenet", "fc"),
    pytest.param("densenet121", "classifier", marks=slow),
    pytest.param("inception_v3", "fc", marks=slow),
    pytest.param("convnext_tiny", "classifier.2", marks=slow),
    pytest.param("swin_t", "head", marks=slow),
    pytest.param("vit_b_16", "heads.head", marks=slow),
]


@pytest.mark.parametrize("name, head", PRETRAINED)
def test_pretrained_loads_every_layer_but_the_head_from_the_cached_file(torch_home, name, head):
    checkpoints, attempts = torch_home
    imagenet = _write_fake_weights(checkpoints, name)
    torch.manual_seed(99)
    model = create_model(f"torchvision:{name}", num_classes=NUM_CLASSES, pretrained=True)
    state = model.state_dict()
    assert attempts == []
    head_keys = {k for k in state if k.rpartition(".")[0] == head}
    assert head_keys and classifier_head(model, NUM_CLASSES)[0] == head
    for key, value in state.items():
        if key in head_keys:
            assert value.shape[0] == NUM_CLASSES and imagenet[key].shape[0] == 1000, key
        else:
            assert torch.equal(value, imagenet[key]), key
    assert set(imagenet) - set(state) == {  # only auxiliary classifiers are left out
        k for k in imagenet if k.startswith(("aux1.", "aux2.", "AuxLogits."))
    }
    side = {"inception_v3": 75, "swin_t": 64, "vit_b_16": 224}.get(name, 32)
    model.train()
    assert model(torch.randn(2, 3, side, side)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(
    "name, side",
    [("googlenet", 32), ("squeezenet1_1", 32), pytest.param("inception_v3", 75, marks=slow)],
)
def test_pretrained_equals_torchvisions_own_pretrained_model_but_for_the_head(
    torch_home, name, side
):
    """dmx loads the file itself, so it must set what torchvision's builder sets from the weights
    (googlenet / inception_v3: transform_input=True for Google's input scaling)."""
    checkpoints, attempts = torch_home
    _write_fake_weights(checkpoints, name)
    ours = create_model(f"torchvision:{name}", num_classes=NUM_CLASSES, pretrained=True).eval()
    theirs = get_model(name, weights="DEFAULT").eval()  # reads the same cached file
    head_name, head = classifier_head(ours, NUM_CLASSES)
    theirs.set_submodule(head_name, head)
    images = torch.randn(2, 3, side, side)
    with torch.no_grad():
        logits = ours(images)
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(logits, theirs(images), rtol=0, atol=0)
    assert attempts == []


@pytest.mark.parametrize(
    "name, weights", [("efficientnet_b0", "DEFAULT"), ("resnet50", "IMAGENET1K_V1")]
)
def test_pretrained_offline_names_the_exact_cache_path_and_url(torch_home, name, weights):
    checkpoints, attempts = torch_home
    url, file_name = _cache_file(name, weights)
    suffix = "" if weights == "DEFAULT" else f".{weights}"
    with pytest.raises(PretrainedWeightsError) as info:
        create_model(f"torchvision:{name}{suffix}", num_classes=3, pretrained=True)
    text = str(info.value)
    assert (
        text.startswith(f"torchvision:{name}{suffix}: model.pretrained=true") and "\n" not in text
    )
    assert f"Put the file {url} at {checkpoints / file_name} " in text
    assert attempts == [url]


def test_pretrained_needs_three_channels_and_fails_before_any_download(torch_home):
    _, attempts = torch_home
    with pytest.raises(ValueError, match="3 input channels, got in_channels=1"):
        create_model("torchvision:efficientnet_b0", num_classes=3, in_channels=1, pretrained=True)
    assert attempts == []


def test_pinned_weights_are_the_ones_loaded(torch_home):
    """`torchvision:resnet50.IMAGENET1K_V1` reads V1's file, the registered resnet50's."""
    checkpoints, attempts = torch_home
    url, file_name = _cache_file("resnet50", "IMAGENET1K_V1")
    imagenet = _perturb(get_model("resnet50", num_classes=1000), seed=2)
    checkpoints.mkdir(parents=True)
    torch.save(imagenet, checkpoints / file_name)
    for name in ("torchvision:resnet50.IMAGENET1K_V1", "resnet50"):
        state = create_model(name, num_classes=3, pretrained=True).state_dict()
        assert torch.equal(state["layer1.0.conv1.weight"], imagenet["layer1.0.conv1.weight"])
    with pytest.raises(PretrainedWeightsError, match="IMAGENET1K_V2"):  # DEFAULT: another file
        create_model("torchvision:resnet50", num_classes=3, pretrained=True)
    assert attempts == [get_model_weights("resnet50").DEFAULT.url]


def test_weights_file_of_another_head_follows_the_head_rule(tmp_path):
    """model.weights=PATH: squeezenet's head is a conv, and still the part that starts fresh."""
    source = create_model("torchvision:squeezenet1_1", num_classes=10)
    want = _perturb(source, seed=3)
    torch.save(want, tmp_path / "w.pt")
    with pytest.warns(UserWarning, match=r"classifier\.1\.bias \(file \(10,\), model \(3,\)\)"):
        model = create_model("torchvision:squeezenet1_1", num_classes=3, weights=tmp_path / "w.pt")
    got = model.state_dict()
    assert got["classifier.1.weight"].shape == (3, 512, 1, 1)
    assert all(torch.equal(got[k], v) for k, v in want.items() if not k.startswith("classifier"))


# --------------------------------------------------------------------------- names and sizes


@pytest.mark.parametrize(
    "name, close",
    [
        ("torchvision:resnet5", "torchvision:resnet50"),
        ("torchvision:vit_b16", "torchvision:vit_b_16"),
        ("torchvision:efficientnet-b0", "torchvision:efficientnet_b0"),
        ("torchvision:", "no close match"),
    ],
)
def test_unknown_torchvision_name_lists_close_matches_on_one_line(name, close):
    with pytest.raises(ValueError, match=f"unknown torchvision model '{name}'") as info:
        create_model(name, num_classes=3)
    assert close in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="close match"):
        input_size(name)  # the data pipeline asks first: the same error


def test_unknown_weights_list_the_models_weights():
    with pytest.raises(ValueError, match="has no weights 'IMAGENET9K'") as info:
        create_model("torchvision:resnet50.IMAGENET9K", num_classes=3)
    assert "IMAGENET1K_V1, IMAGENET1K_V2 (DEFAULT = IMAGENET1K_V2)" in str(info.value)


def test_unknown_registry_name_points_at_the_torchvision_model():
    with pytest.raises(ValueError, match="close matches: torchvision:resnet18"):
        create_model("resnet18", num_classes=3)


@pytest.mark.parametrize(
    "name, size",
    [
        ("torchvision:resnet50", (232, 224)),  # DEFAULT = IMAGENET1K_V2
        ("torchvision:resnet50.IMAGENET1K_V1", (256, 224)),
        ("resnet50", (256, 224)),  # registered: V1, the Clothing1M recipe's sizes
        ("torchvision:inception_v3", (342, 299)),
        ("torchvision:efficientnet_b3", (320, 300)),
        ("torchvision:vit_h_14", (518, 518)),  # DEFAULT = IMAGENET1K_SWAG_E2E_V1
    ],
)
def test_input_size_follows_the_weights_transforms(name, size):
    assert input_size(name) == size


def test_input_size_of_every_torchvision_model_is_its_weights_eval_transform():
    for name in torchvision_models():
        transforms = get_model_weights(name).DEFAULT.transforms()
        want = (transforms.resize_size[0], transforms.crop_size[0])
        assert input_size(f"torchvision:{name}") == want, name


@pytest.mark.parametrize("name, attribute", [("vit_h_14", "image_size"), ("maxvit_t", None)])
def test_size_bound_architectures_are_built_for_their_input_size(name, attribute):
    crop = input_size(f"torchvision:{name}")[1]
    with torch.device("meta"):
        model = create_model(f"torchvision:{name}", num_classes=3)
        out = model.eval()(torch.empty(1, 3, crop, crop))
    assert out.shape == (1, 3)
    if attribute:
        assert getattr(model, attribute) == crop


def test_dataset_input_size_follows_the_model(monkeypatch):
    """`data.image_size` / `data.resize` unset: the dataset is loaded at the model's size."""
    import dmx.prepare
    from dmx.config import Config

    seen = {}
    monkeypatch.setattr(dmx.prepare, "load_dataset", lambda *a, **kw: seen.update(kw))
    cfg = Config().with_overrides({"model.name": "torchvision:efficientnet_b3"})
    dmx.prepare.load_run_dataset(cfg)
    assert (seen["resize"], seen["image_size"]) == (320, 300)


def test_available_models_lists_the_registry_then_every_torchvision_classifier():
    names = available_models()
    assert names[: len(MODELS)] == list(MODELS)
    torchvision_names = sorted(list_models(module=torchvision.models))
    assert names[len(MODELS) :] == [f"torchvision:{n}" for n in torchvision_names]
    assert "torchvision:resnet50" in names and "torchvision:fasterrcnn_resnet50_fpn" not in names
