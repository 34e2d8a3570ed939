"""The training loop end to end on small real-format data: phases, files, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dmx.cli import main as dmx_main
from dmx.config import Config
from dmx.prepare import prepare_data
from dmx.presets import get_preset
from dmx.reporting import EpochCallback, Reporters, RunDirReporter
from dmx.samples import sample_report_from_checkpoint
from dmx.state import list_checkpoints, load_latest_checkpoint
from dmx.train import NonFiniteLossError, fit, learning_rate
from tests.fixtures import poisoned_model_source

TIMING = {"epoch_seconds", "images_per_second"}


def to_dir(run_dir, cfg, *more) -> Reporters:
    """The reporters of `dmx train --out run_dir` (without MLflow), plus `more`."""
    return Reporters(RunDirReporter(run_dir, keep_checkpoints=cfg.run.keep_checkpoints), *more)


def small_cfg(root, **overrides) -> Config:
    """cifar10-asym-0.4 shrunk to seconds: small CNN, 1 warmup epoch, tiny batches."""
    base = {
        "data.root": str(root),
        "model.name": "small_cnn",
        "run.epochs": 3,
        "dividemix.warmup_epochs": 1,
        "optim.batch_size": 32,
        "optim.warmup_batch_size": 64,
        "optim.lr": 0.02,
        "dividemix.lambda_u": 25.0,  # non-zero so the unlabelled loss is exercised
        "noise.cache_dir": str(root / "noise"),
        "data.val_fraction": 0.05,  # exercise the noisy-validation split (sweeps set it)
    }
    base.update(overrides)
    return get_preset("cifar10-asym-0.4").with_overrides(base)


def test_fit_runs_both_phases_and_writes_the_run_dir(cifar10_root, tmp_path):
    cfg = small_cfg(cifar10_root)
    run_dir = tmp_path / "run"
    seen = []
    record = EpochCallback(lambda e, m, s: seen.append((e, dict(m), s.epoch)))
    state = fit(cfg, reporter=to_dir(run_dir, cfg, record))
    assert [e for e, _, _ in seen] == [0, 1, 2]
    assert [s for _, _, s in seen] == [1, 2, 3]  # state.epoch = completed epochs at report time
    warm, dm = seen[0][1], seen[2][1]
    assert warm["phase"] == 0 and "warmup_loss_net1" in warm and "labeled_net1" not in warm
    assert dm["phase"] == 1
    for key in (
        "labeled_net1",
        "labeled_net2",
        "auc_net1",
        "precision_net2",
        "recall_net1",
        "lx_net1",
        "lu_net2",
        "penalty_net1",
        "lambda_u_eff",
        "test_acc",
        "test_acc_net1",
        "test_acc_net2",
        "val_acc",
        "best_test_acc",
        "last10_test_acc",
        "epoch_seconds",
        "images_per_second",
        "lr",
    ):
        assert key in dm, key
    n_train = 600 - round(0.05 * 600)
    assert 0 < dm["labeled_net1"] <= n_train
    # λu ramps linearly from the end of warmup: epoch 2 ends at (2 + i/num_iter - 1)/16 < 2/16.
    assert 0 < dm["lambda_u_eff"] <= 25.0 * 2 / 16
    assert state.epoch == 3
    assert (run_dir / "config.json").exists()
    assert Config.from_json((run_dir / "config.json").read_text()) == cfg.resolved()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
    assert len(list_checkpoints(run_dir / "checkpoints")) == cfg.run.keep_checkpoints
    noisy = pq.read_table(run_dir / "noisy_labels.parquet").to_pandas()
    assert len(noisy) == 600 and {"index", "true_label", "noisy_label"} <= set(noisy.columns)
    report = pq.read_table(run_dir / "clean_probs.parquet").to_pandas()
    assert len(report) == n_train
    for col in ("clean_prob_net1", "clean_prob_net2", "pred_prob_given"):
        assert report[col].between(0, 1).all(), col
    assert set(report["index"]).isdisjoint(set(prepare_data(cfg).val_idx))

    # The same file from the checkpoint alone (what a sweep trial stopped early by ASHA has), and
    # `dmx label-issues` on a folder that holds only checkpoints computes it first.
    again = sample_report_from_checkpoint(run_dir / "checkpoints", tmp_path / "again.parquet")
    assert pq.read_table(again).to_pandas().equals(report)
    (run_dir / "clean_probs.parquet").unlink()
    assert dmx_main(["label-issues", str(run_dir), "--top", "5"]) == 0
    assert pq.read_table(run_dir / "clean_probs.parquet").to_pandas().equals(report)
    assert len(pq.read_table(run_dir / "label_issues.parquet")) == 5


def _strip(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def test_resume_is_bit_identical(cifar10_root, tmp_path):
    # Cut after warmup + one DivideMix epoch: the resumed epoch needs the loss history, both
    # optimisers' momentum and every RNG stream of the checkpoint to come out identical.
    cfg = small_cfg(cifar10_root, **{"run.epochs": 3})
    full = fit(cfg, reporter=to_dir(tmp_path / "full", cfg))

    cut = cfg.with_overrides({"run.epochs": 2})
    fit(cut, reporter=to_dir(tmp_path / "cut", cut))  # "killed" after epoch 2
    state = load_latest_checkpoint(tmp_path / "cut" / "checkpoints")
    assert state.epoch == 2
    resumed = fit(cfg, state=state, reporter=to_dir(tmp_path / "cut", cfg))

    assert resumed.epoch == full.epoch == 3
    for name in ("net1", "net2"):
        a, b = getattr(full, name), getattr(resumed, name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert _strip(full.metrics_history) == _strip(resumed.metrics_history)
    assert torch.equal(full.clean_prob1, resumed.clean_prob1)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]


def test_resume_refuses_a_different_config(cifar10_root, tmp_path):
    cfg = small_cfg(cifar10_root, **{"run.epochs": 1})
    state = fit(cfg)
    with pytest.raises(ValueError, match="dividemix.lambda_u"):
        fit(cfg.with_overrides({"dividemix.lambda_u": 3.0, "run.epochs": 2}), state=state)


@pytest.mark.parametrize("threshold,empty", [(1.0, "labelled"), (0.0, "unlabelled")])
def test_empty_split_does_not_crash(cifar10_root, threshold, empty):
    cfg = small_cfg(cifar10_root, **{"run.epochs": 2, "dividemix.p_threshold": threshold})
    state = fit(cfg)
    last = state.metrics_history[-1]
    # p > 1.0 never holds: nothing labelled; p > 0 holds for (almost) every sample.
    if empty == "labelled":
        assert last["labeled_net1"] == 0 and last["empty_labelled_net1"] == 1.0
        assert last["skipped_net1"] == 1.0
    else:
        n = last["labeled_net1"]
        assert n >= 0.9 * 570
    assert np.isfinite(last["test_acc"])


def test_non_finite_loss_stops_with_the_epoch_and_keeps_the_checkpoint(
    cifar10_root, tmp_path, monkeypatch
):
    # Finite during warmup epoch 0, NaN once the second epoch starts.
    (tmp_path / "nanmodels.py").write_text(poisoned_model_source(nan_after=12))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = small_cfg(cifar10_root, **{"model.name": "nanmodels:make", "run.epochs": 3})
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        fit(cfg, reporter=to_dir(run_dir, cfg))
    state = load_latest_checkpoint(run_dir / "checkpoints")
    assert state.epoch == 1  # epoch 0's checkpoint, intact


def test_lr_schedule_is_the_reference_step():
    cfg = Config()
    assert learning_rate(cfg, 0) == 0.02 and learning_rate(cfg, 149) == 0.02
    assert learning_rate(cfg, 150) == pytest.approx(0.002) and learning_rate(
        cfg, 300
    ) == pytest.approx(0.002)


def test_missing_dataset_names_the_folder_and_the_fix(tmp_path):
    cfg = small_cfg(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        fit(cfg)


def test_cuda_requested_without_cuda_is_a_clear_error(cifar10_root):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="no usable CUDA"):
        fit(small_cfg(cifar10_root, **{"run.device": "cuda"}))


def test_validation_split_is_independent_of_the_noise(tmp_path):
    # noise.seed and data.split_seed are both 0 by default: the split must not reuse the noise
    # generator's permutation (that made the validation set exactly the flipped samples).
    cfg = get_preset("digits-sym-0.5").with_overrides(
        {"data.val_fraction": 0.2, "noise.cache_dir": str(tmp_path)}
    )
    data = prepare_data(cfg)
    wrong = data.noisy.noisy_labels != data.noisy.true_labels
    overall, val = wrong.mean(), wrong[data.val_idx].mean()
    assert abs(val - overall) < 0.08, (val, overall)
    assert set(data.val_idx).isdisjoint(data.train_idx)


def test_bf16_and_channels_last_run_on_cpu(cifar10_root):
    # The fast path is an option that must work on CPU as well as CUDA (results are not bit-exact).
    cfg = small_cfg(
        cifar10_root,
        **{
            "run.epochs": 2,
            "run.precision": "bf16",
            "run.channels_last": True,
            "data.subset": 96,
            "data.test_subset": 40,
            "optim.batch_size": 16,
        },
    )
    state = fit(cfg)
    last = state.metrics_history[-1]
    assert last["phase"] == 1 and np.isfinite(last["lx_net1"]) and 0 <= last["test_acc"] <= 100
    assert abs(last["noise_rate"] - 20) < 15  # % : asym 40% flips half the classes, ~20% wrong
