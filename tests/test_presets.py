"""Presets: each setting pinned to its source (the reference scripts' constants), and the CIFAR-N
presets end to end on a fixture in the CIFAR-N file format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmx.config import Config
from dmx.prepare import prepare_data
from dmx.presets import PRESETS, get_preset
from tests.fixtures import write_cifar_fixture


def test_every_preset_builds_and_resolves():
    for name in PRESETS:
        cfg = get_preset(name).resolved()
        assert cfg.preset == name and not cfg.auto_sources()


def _flat(name: str) -> dict:
    return get_preset(name).resolved().to_flat()


def test_clothing1m_is_the_references_recipe():
    """Train_clothing1M.py / dataloader_clothing1M.py of the DivideMix release."""
    f = _flat("clothing1m")
    assert f["data.dataset"] == "clothing1m" and f["noise.mode"] == "none"
    assert f["model.name"] == "resnet50" and f["model.pretrained"] is True
    assert (f["optim.lr"], f["optim.lr_decay_epochs"], f["optim.weight_decay"]) == (
        0.002,
        [40],
        1e-3,
    )
    assert (f["optim.batch_size"], f["optim.warmup_batch_size"], f["optim.momentum"]) == (
        32,
        64,
        0.9,
    )
    assert (f["dividemix.alpha"], f["dividemix.lambda_u"], f["dividemix.T"]) == (0.5, 0.0, 0.5)
    assert f["dividemix.p_threshold"] == 0.5
    assert f["dividemix.warmup_epochs"] == 1 and f["dividemix.warmup_confidence_penalty"] is True
    assert f["dividemix.resample"] == "balanced" and f["dividemix.num_batches"] == 1000
    assert f["dividemix.mix_labeled_only"] is True and f["dividemix.loss_history_window"] == 1
    assert (f["dividemix.gmm_max_iter"], f["dividemix.gmm_tol"], f["dividemix.gmm_reg_covar"]) == (
        10,
        1e-2,
        5e-4,
    )
    assert f["run.epochs"] == 81 and f["run.best_on_clean_val"] is True


def test_webvision_is_the_references_recipe():
    """Train_webvision.py / dataloader_webvision.py of the DivideMix release."""
    f = _flat("webvision-50")
    assert f["data.dataset"] == "webvision" and f["noise.mode"] == "none"
    assert f["model.name"] == "inception_resnet_v2" and f["model.pretrained"] is False
    assert (f["optim.lr"], f["optim.lr_decay_epochs"], f["optim.weight_decay"]) == (
        0.01,
        [40],
        5e-4,
    )
    assert (f["optim.batch_size"], f["optim.warmup_batch_size"]) == (32, 64)
    assert (f["dividemix.alpha"], f["dividemix.lambda_u"]) == (0.5, 0.0)
    assert f["dividemix.warmup_epochs"] == 1 and f["dividemix.warmup_confidence_penalty"] is False
    assert f["dividemix.resample"] == "none" and f["dividemix.mix_labeled_only"] is True
    assert f["dividemix.loss_history_window"] == 1 and f["dividemix.peer_snapshot"] is False
    assert f["run.epochs"] == 81 and f["run.best_on_clean_val"] is False


def test_the_cifar_recipe_keeps_every_real_world_switch_off():
    f = Config().resolved().to_flat()
    assert f["dividemix.resample"] == "none" and f["dividemix.mix_labeled_only"] is False
    assert f["dividemix.peer_snapshot"] is False and f["run.best_on_clean_val"] is False


def _human_file(root, labels: dict[str, np.ndarray], name: str = "CIFAR-10_human.pt") -> None:
    """A file in the CIFAR-N release's format: a torch zip holding a dict of numpy arrays."""
    torch.save({k: np.asarray(v) for k, v in labels.items()}, root / name)


@pytest.mark.parametrize(
    "preset,key",
    [
        ("cifar10n-aggre", "aggre_label"),
        ("cifar10n-random1", "random_label1"),
        ("cifar10n-random2", "random_label2"),
        ("cifar10n-random3", "random_label3"),
        ("cifar10n-worst", "worse_label"),
    ],
)
def test_cifar10n_presets_train_on_their_key_of_the_file_in_the_data_folder(tmp_path, preset, key):
    root = write_cifar_fixture(tmp_path / "data", n_train=100, n_test=20)
    clean = prepare_data(Config().with_overrides({"data.root": str(root), "noise.mode": "none"}))
    truth = clean.noisy.true_labels
    rng = np.random.default_rng(0)
    keys = ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
    files = {
        k: np.where(rng.random(100) < 0.3, (truth + 1 + i) % 10, truth) for i, k in enumerate(keys)
    }
    _human_file(root, {"clean_label": truth, **files})
    cfg = get_preset(preset).with_overrides({"data.root": str(root)})
    prepared = prepare_data(cfg)
    assert np.array_equal(prepared.noisy.noisy_labels, files[key])
    assert np.array_equal(prepared.noisy.true_labels, truth)
    assert prepared.noisy.realised_rate == pytest.approx(np.mean(files[key] != truth))


def test_cifar100n_preset_and_a_missing_file_is_one_clear_error(tmp_path):
    root = write_cifar_fixture(tmp_path / "data", dataset="cifar100", n_train=200, n_test=100)
    cfg = get_preset("cifar100n-noisy").with_overrides({"data.root": str(root)})
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100_human.pt.*cifar-10-100n"):
        prepare_data(cfg)
    truth = prepare_data(cfg.with_overrides({"noise.mode": "none"})).noisy.true_labels
    noisy = (truth + 1) % 100
    _human_file(root, {"clean_label": truth, "noisy_label": noisy}, "CIFAR-100_human.pt")
    prepared = prepare_data(cfg)
    assert np.array_equal(prepared.noisy.noisy_labels, noisy)
    assert get_preset("cifar100n-noisy").resolved().dividemix.warmup_epochs == 30
