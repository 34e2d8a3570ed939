"""dmx.models: every registered model through one parametrised test, then the factory's edges
(torchvision:NAME backbones: tests/test_backbones.py)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from dmx.models import MODELS, PretrainedWeightsError, WeightsFileError, create_model

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


RESNET50_FILE = "resnet50-0676ba61.pth"  # the file name in ResNet50_Weights.IMAGENET1K_V1.url


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub folder and no network: every download attempt is recorded and fails."""
    attempts = []

    def no_download(url, dst, *args, **kwargs):
        attempts.append(url)
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "hub" / "checkpoints", attempts


def test_resnet50_pretrained_offline_names_the_exact_cache_path(hub):
    checkpoints, attempts = hub
    with pytest.raises(PretrainedWeightsError) as info:
        create_model("resnet50", num_classes=14, pretrained=True)
    text = str(info.value)
    assert f"at {checkpoints / RESNET50_FILE} " in text and "\n" not in text
    assert "network is unreachable" in text and "--set model.weights=PATH" in text
    assert attempts == [f"https://download.pytorch.org/models/{RESNET50_FILE}"]


def test_resnet50_pretrained_loads_the_cached_file_without_network(hub):
    checkpoints, attempts = hub
    from torchvision.models import resnet50 as tv_resnet50

    torch.manual_seed(1)
    imagenet = tv_resnet50(num_classes=1000).state_dict()
    checkpoints.mkdir(parents=True)
    torch.save(imagenet, checkpoints / RESNET50_FILE)
    torch.manual_seed(5)
    model = create_model("resnet50", num_classes=14, pretrained=True)
    state = model.state_dict()
    assert attempts == []
    assert torch.equal(state["conv1.weight"], imagenet["conv1.weight"])
    assert torch.equal(state["layer4.2.bn3.running_mean"], imagenet["layer4.2.bn3.running_mean"])
    assert state["fc.weight"].shape == (14, 2048)  # a fresh head for the run's classes
    # exactly what the reference's Clothing1M script (and dmx before torchvision:NAME) builds,
    # down to the fresh head's random draws
    torch.manual_seed(5)
    reference = tv_resnet50(num_classes=1000)
    reference.load_state_dict(imagenet)
    reference.fc = nn.Linear(2048, 14)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in state.items())


def test_resnet50_from_scratch_is_torchvisions_with_a_new_stem_for_other_channels():
    from torchvision.models import resnet50 as tv_resnet50

    torch.manual_seed(6)
    state = create_model("resnet50", num_classes=14, in_channels=1).state_dict()
    torch.manual_seed(6)
    reference = tv_resnet50(num_classes=14)
    reference.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in state.items())


def test_resnet50_pretrained_damaged_cache_file_says_delete_it(hub):
    checkpoints, attempts = hub
    checkpoints.mkdir(parents=True)
    (checkpoints / RESNET50_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match=f"{RESNET50_FILE} could not be read.*Delete"):
        create_model("resnet50", num_classes=14, pretrained=True)
    assert attempts == []


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

def make_pretrained(num_classes, pretrained=False):
    model = nn.Linear(4, num_classes)
    model.pretrained = pretrained
    return model

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


# --------------------------------------------------------------------------- starting weights


def _perturbed_small_cnn(num_classes=NUM_CLASSES, in_channels=3, seed=3):
    """A small_cnn whose every tensor (BN running stats included) differs from a fresh one."""
    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=num_classes, in_channels=in_channels)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    return model


@pytest.mark.parametrize("wrap", ["plain", "state_dict_key", "data_parallel"])
def test_weights_file_round_trip(tmp_path, wrap):
    source = _perturbed_small_cnn().eval()
    state = source.state_dict()
    saved = {
        "plain": state,
        "state_dict_key": {"state_dict": state, "epoch": 7},
        "data_parallel": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(saved, tmp_path / "w.pt")
    torch.manual_seed(99)  # a different init: equal outputs can only come from the file
    model = create_model("small_cnn", num_classes=NUM_CLASSES, weights=str(tmp_path / "w.pt"))
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), source(images), rtol=0, atol=0)
        fresh = create_model("small_cnn", num_classes=NUM_CLASSES).eval()
        assert not torch.allclose(fresh(images), source(images))


def test_weights_with_another_head_load_the_rest_and_name_the_head(tmp_path):
    source = _perturbed_small_cnn(num_classes=100)
    torch.save(source.state_dict(), tmp_path / "w100.pt")
    named = r"not loaded: 9\.bias \(file \(100,\), model \(10,\)\), 9\.weight \(file \(100, 256\)"
    with pytest.warns(UserWarning, match=named):
        model = create_model("small_cnn", num_classes=10, weights=tmp_path / "w100.pt")
    got, want = model.state_dict(), source.state_dict()
    assert got["9.weight"].shape == (10, 256)
    for key in want:
        if not key.startswith("9."):
            assert torch.equal(got[key], want[key]), key
    # a file without any head (a saved backbone) loads the same way
    backbone = {k: v for k, v in want.items() if not k.startswith("9.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    with pytest.warns(UserWarning, match=r"9\.bias \(absent from the file\)"):
        create_model("small_cnn", num_classes=10, weights=tmp_path / "backbone.pt")


def _save(obj):
    return lambda path: torch.save(obj, path)


BAD_WEIGHTS = [
    # (writer, what the one-line message must say)
    (lambda p: p.write_bytes(b"garbage"), r"not a weights-only torch state_dict \(.*Error"),
    (
        _save(nn.Linear(2, 2)),
        r"not a weights-only torch state_dict \(UnpicklingError: .*Unsupported global: GLOBAL "
        r"torch\.nn\.modules\.linear\.Linear\)\..*whole pickled models are not loaded",
    ),
    (_save(torch.zeros(3)), r"holds a Tensor, not a state_dict"),
    (_save({"epoch": 3, "lr": 0.1}), r"holds a dict with keys epoch, lr, not a state_dict"),
    (
        lambda p: torch.save(create_model("preact_resnet18", num_classes=10).state_dict(), p),
        r"does not fit model 'small_cnn': \d+ keys missing from the file \(0\.0\.weight, .*"
        r"\d+ keys not in the model \(conv1\.weight",
    ),
    (
        lambda p: torch.save(_perturbed_small_cnn(in_channels=1).state_dict(), p),
        r"1 keys of another shape \(0\.0\.weight \(32, 1, 3, 3\) vs \(32, 3, 3, 3\)\)",
    ),
]


@pytest.mark.parametrize("write, message", BAD_WEIGHTS)
def test_bad_weights_files_fail_on_one_line(tmp_path, write, message):
    path = tmp_path / "w.pt"
    write(path)
    with pytest.raises(WeightsFileError, match=message) as info:
        create_model("small_cnn", num_classes=10, weights=path)
    assert "\n" not in str(info.value) and f"model.weights {path}" in str(info.value)
    assert "torch.save(model.state_dict(), PATH)" in str(info.value)  # the fix


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.weights .*nope.pt does not exist"):
        create_model("small_cnn", num_classes=10, weights=tmp_path / "nope.pt")


def test_pretrained_without_pretrained_weights_names_the_models_that_have_them(factories):
    for name in ("small_cnn", "preact_resnet18", f"{factories}:make_tiny"):
        with pytest.raises(ValueError, match="has no pretrained weights") as info:
            create_model(name, num_classes=10, pretrained=True)
        assert "resnet50" in str(info.value) and "model.weights=PATH" in str(info.value)


def test_pretrained_is_passed_to_a_factory_that_takes_it(factories):
    model = create_model(f"{factories}:make_pretrained", num_classes=3, pretrained=True)
    assert model.pretrained is True
    assert create_model(f"{factories}:make_pretrained", num_classes=3).pretrained is False


def test_pretrained_and_weights_exclude_each_other(tmp_path):
    from dmx.config import Config, ConfigError

    with pytest.raises(ValueError, match="choose one"):
        create_model("resnet50", num_classes=3, pretrained=True, weights=tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="model.weights"):
        Config().with_overrides({"model.pretrained": "true", "model.weights": "w.pt"})


def _train(tmp_path, *sets):
    from dmx.cli import main

    argv = ["train", "--preset", "digits-sym-0.5", "--epochs", "1", "--no-mlflow", "--quiet"]
    for s in sets:
        argv += ["--set", s]
    return main([*argv, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path)])


def test_dmx_train_honours_model_weights_and_pretrained_with_exit_2(tmp_path, capsys):
    """`dmx train` hands model.weights / model.pretrained to the nets: a garbage file and a
    model without pretrained weights stop the run with one line and exit 2, before any epoch."""
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    assert _train(tmp_path, f"model.weights={tmp_path / 'garbage.pt'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dmx: error: model.weights") and "not a weights-only" in err[-1]
    assert _train(tmp_path, "model.pretrained=true") == 2
    assert "'small_cnn' has no pretrained weights" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_needs_no_starting_weights_file(tmp_path):
    # The checkpoint holds the weights: a resumed run must not reload model.weights (the file
    # may be gone by then), and it continues exactly the run that used it.
    from dmx.presets import get_preset
    from dmx.train import fit

    src = create_model("small_cnn", num_classes=10, in_channels=1)
    weights = tmp_path / "start.pt"
    torch.save(src.state_dict(), weights)
    cfg = get_preset("digits-sym-0.5").with_overrides(
        {
            "data.subset": 120,
            "data.test_subset": 40,
            "noise.cache_dir": str(tmp_path),
            "run.epochs": 2,
            "dividemix.warmup_epochs": 1,
            "model.weights": str(weights),
        }
    )
    full = fit(cfg)
    cut = fit(cfg.with_overrides({"run.epochs": 1}))
    weights.unlink()
    resumed = fit(cfg, state=cut)
    assert all(torch.equal(full.net1[k], resumed.net1[k]) for k in full.net1)
