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
    dm = cfg.dividemix
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
        cfg = get_preset(name)
        assert cfg.dividemix.lambda_u == lam, name
        assert cfg.preset == name
        high = name.endswith("0.9")
        assert cfg.dividemix.p_threshold == (0.6 if high else 0.5), name
        assert cfg.dividemix.loss_history_window == (5 if high else 1), name
        assert cfg.dividemix.warmup_epochs == (30 if name.startswith("cifar100") else 10), name
        assert cfg.data.dataset == name.split("-")[0]
    asym = get_preset("cifar10-asym-0.4")
    assert asym.noise.mode == "asym" and asym.noise.rate == 0.4
    assert asym.dividemix.warmup_confidence_penalty
    assert not get_preset("cifar10-sym-0.5").dividemix.warmup_confidence_penalty
    assert set(expected_lambda) <= set(PRESETS)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="cifar10-asym-0.4"):
        get_preset("cifar10-asym-0.5")
