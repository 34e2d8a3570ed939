"""Config: validation, flat round trips, --set parsing, presets pinned to the paper."""

import json

import pytest

from dmx.config import Config, ConfigError, field_docs
from dmx.presets import PRESETS, get_preset


def test_defaults_are_the_reference_recipe():
    cfg = Config()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.02, 0.9, 5e-4)
    assert cfg.optim.lr_decay_epochs == (150,) and cfg.optim.lr_decay_factor == 0.1
    assert (cfg.optim.batch_size, cfg.optim.warmup_batch_size) == (64, 128)
    assert cfg.data.val_fraction == 0.0  # the reference trains on every sample: no held-out split
    assert cfg.data.subset == 0 and cfg.data.test_subset == 0
    assert cfg.noise.exclude_true_class is False
    dm = cfg.resolved().dividemix
    assert dm.loss_history_window == 1 and dm.warmup_confidence_penalty is False
    assert (dm.alpha, dm.T, dm.p_threshold, dm.warmup_epochs, dm.rampup_length) == (
        4,
        0.5,
        0.5,
        10,
        16,
    )
    assert (dm.gmm_max_iter, dm.gmm_tol, dm.gmm_reg_covar) == (10, 1e-2, 5e-4)
    assert dm.co_guess_eval_mode is False and dm.prior_penalty is True
    assert cfg.run.epochs == 301 and cfg.run.precision == "fp32" and cfg.run.seed == 123
    assert cfg.model.name == "preact_resnet18"


def test_flat_round_trip_and_json():
    cfg = get_preset("cifar100-sym-0.9")
    flat = cfg.to_flat()
    assert flat["dividemix.lambda_u"] == 150.0 and flat["optim.lr_decay_epochs"] == [150]
    assert Config.from_flat(flat) == cfg
    assert Config.from_json(json.dumps(flat)) == cfg


def test_string_overrides_are_parsed_by_type():
    cfg = Config().with_overrides(
        {
            "dividemix.lambda_u": "50",
            "run.deterministic": "false",
            "optim.lr_decay_epochs": "100,200",
            "run.epochs": "7",
            "noise.mode": "asym",
        }
    )
    assert cfg.dividemix.lambda_u == 50.0 and isinstance(cfg.dividemix.lambda_u, float)
    assert cfg.run.deterministic is False
    assert cfg.optim.lr_decay_epochs == (100, 200)
    assert cfg.run.epochs == 7 and cfg.noise.mode == "asym"


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("dividemix.T", 0, "dividemix.T"),
        ("dividemix.p_threshold", 1.5, "p_threshold"),
        ("dividemix.lambda_u", -1, "lambda_u"),
        ("dividemix.alpha", 0, "alpha"),
        ("optim.lr", 0, "optim.lr"),
        ("optim.batch_size", 0, "batch_size"),
        ("run.epochs", 0, "run.epochs"),
        ("noise.rate", 1.2, "noise.rate"),
        ("noise.mode", "pairflip", "noise.mode"),
        ("run.epochs", "ten", "run.epochs"),
        ("run.deterministic", "maybe", "run.deterministic"),
        ("data.val_fraction", 1.0, "val_fraction"),
        ("run.precision", "fp8", "precision"),
    ],
)
def test_invalid_values_name_the_field(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config().with_overrides({key: value})


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="dividemix.lambda_u"):
        Config().with_overrides({"dividemix.lamda_u": 1})


def test_every_field_is_documented():
    docs = field_docs()
    assert set(docs) == {k for k in Config().to_flat() if k != "preset"}
    assert all(len(d) > 10 for d in docs.values())


def test_presets_match_the_paper_appendix():
    expected_lambda = {
        "cifar10-sym-0.2": 0,
        "cifar10-sym-0.5": 25,
        "cifar10-sym-0.8": 25,
        "cifar10-sym-0.9": 50,
        "cifar10-asym-0.4": 0,
        "cifar100-sym-0.2": 25,
        "cifar100-sym-0.5": 150,
        "cifar100-sym-0.8": 150,
        "cifar100-sym-0.9": 150,
    }
    for name, lam in expected_lambda.items():
        cfg = get_preset(name).resolved()
        assert cfg.dividemix.lambda_u == lam, name
        assert cfg.preset == name
        high = name.endswith("0.9")
        assert cfg.dividemix.p_threshold == (0.6 if high else 0.5), name
        assert cfg.dividemix.loss_history_window == (5 if high else 1), name
        assert cfg.dividemix.warmup_epochs == (30 if name.startswith("cifar100") else 10), name
        assert cfg.data.dataset == name.split("-")[0]
    asym = get_preset("cifar10-asym-0.4").resolved()
    assert asym.noise.mode == "asym" and asym.noise.rate == 0.4
    assert asym.dividemix.warmup_confidence_penalty is True
    assert get_preset("cifar10-sym-0.5").resolved().dividemix.warmup_confidence_penalty is False
    assert set(expected_lambda) <= set(PRESETS)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="cifar10-asym-0.4"):
        get_preset("cifar10-asym-0.5")


@pytest.mark.parametrize(
    "preset,overrides,expected",
    [
        # A preset's dataset or noise overridden: the derived settings follow, as in the reference.
        ("cifar10-sym-0.5", {"noise.mode": "asym", "noise.rate": 0.4}, (10, True, 1)),
        ("cifar10-sym-0.5", {"data.dataset": "cifar100"}, (30, False, 1)),
        ("cifar10-sym-0.5", {"noise.rate": 0.9}, (10, False, 5)),
        ("cifar100-sym-0.9", {"noise.rate": 0.8}, (30, False, 1)),
        ("cifar10-asym-0.4", {"noise.mode": "sym"}, (10, False, 1)),
        # Explicit values always win over auto.
        ("cifar10-sym-0.9", {"dividemix.loss_history_window": 2}, (10, False, 2)),
        ("cifar10-asym-0.4", {"dividemix.warmup_confidence_penalty": "false"}, (10, False, 1)),
        ("cifar100-sym-0.2", {"dividemix.warmup_epochs": "3"}, (3, False, 1)),
        ("digits-sym-0.5", {}, (5, False, 1)),
    ],
)
def test_auto_fields_are_derived_as_the_reference_derives_them(preset, overrides, expected):
    cfg = get_preset(preset).with_overrides(overrides).resolved()
    dm = cfg.dividemix
    assert (dm.warmup_epochs, dm.warmup_confidence_penalty, dm.loss_history_window) == expected
    assert cfg.resolved() == cfg  # idempotent
    assert Config.from_flat(cfg.to_flat()) == cfg


def test_auto_sources_name_the_rule_and_the_value():
    cfg = get_preset("cifar10-sym-0.5").with_overrides({"data.dataset": "cifar100"})
    sources = cfg.auto_sources()
    assert sources["dividemix.warmup_epochs"].startswith("auto -> 30")
    assert "cifar100" in sources["dividemix.warmup_epochs"]
    assert set(sources) == {
        "dividemix.warmup_epochs",
        "dividemix.warmup_confidence_penalty",
        "dividemix.loss_history_window",
    }
    assert cfg.resolved().auto_sources() == {}  # nothing left to derive
    fixed = cfg.with_overrides({"dividemix.warmup_epochs": 4})
    assert "dividemix.warmup_epochs" not in fixed.auto_sources()


def test_auto_fields_parse_and_reject_like_any_field():
    cfg = Config().with_overrides({"dividemix.warmup_epochs": "auto"})
    assert cfg.dividemix.warmup_epochs == "auto"
    with pytest.raises(ConfigError, match="dividemix.warmup_epochs.*auto or int"):
        Config().with_overrides({"dividemix.warmup_epochs": "ten"})
    with pytest.raises(ConfigError, match="loss_history_window"):
        Config().with_overrides({"dividemix.loss_history_window": 0})


def test_dmx_config_shows_resolved_values_and_their_source(capsys):
    from dmx.cli import main

    assert main(["config", "--preset", "cifar10-sym-0.5", "--set", "data.dataset=cifar100"]) == 0
    lines = {ln.split(" = ")[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert lines["dividemix.warmup_epochs"].startswith("dividemix.warmup_epochs = 30    # auto")
    assert lines["data.val_fraction"] == "data.val_fraction = 0.0"
