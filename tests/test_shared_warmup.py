"""Shared warmup (issue 14, item 4): the warmup's identity, and a trial that loads another
trial's warmup ends bit-identical to the same trial that trained its own."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
import torch

from dmx.config import Config
from dmx.presets import get_preset
from dmx.sweep import warmup as shared
from dmx.train import fit, run_epoch, setup

TIMING = {"epoch_seconds", "images_per_second"}


def tiny(tmp_path, **overrides) -> Config:
    return get_preset("digits-sym-0.5").with_overrides(
        {
            "data.subset": 120,
            "data.test_subset": 40,
            "noise.cache_dir": str(tmp_path / "noise"),
            "run.device": "cpu",
            "run.epochs": 3,
            "dividemix.warmup_epochs": 1,
            "optim.batch_size": 16,
            "optim.warmup_batch_size": 32,
            **overrides,
        }
    )


def _warmup_nets(cfg: Config):
    s = setup(cfg)
    for epoch in range(cfg.resolved().dividemix.warmup_epochs):
        run_epoch(s, epoch)
    return s.state


# A different valid value for each key the warmup never reads.
OTHER_VALUE = {
    "dividemix.lambda_u": 75.0,
    "dividemix.T": 0.8,
    "dividemix.alpha": 0.5,
    "dividemix.p_threshold": 0.7,
    "dividemix.rampup_length": 4.0,
    "dividemix.loss_history_window": 3,
    "dividemix.prior_penalty": False,
    "dividemix.co_guess_eval_mode": True,
    "dividemix.gmm_max_iter": 3,
    "dividemix.gmm_tol": 0.1,
    "dividemix.gmm_reg_covar": 1e-3,
    "dividemix.mix_labeled_only": True,
    "dividemix.peer_snapshot": True,
    "optim.batch_size": 8,
    "run.epochs": 9,
    "run.keep_checkpoints": 5,
    "data.num_workers": 0,
    "preset": "another",
}


def test_every_warmup_free_key_leaves_the_warmup_bit_identical(tmp_path):
    assert set(OTHER_VALUE) == set(shared.WARMUP_FREE_KEYS)
    base = _warmup_nets(tiny(tmp_path))
    for key, value in OTHER_VALUE.items():
        cfg = tiny(tmp_path, **{key: value})
        assert shared.warmup_key(cfg) == shared.warmup_key(tiny(tmp_path)), key
        other = _warmup_nets(cfg)
        for net in ("net1", "net2"):
            a, b = getattr(base, net), getattr(other, net)
            assert all(torch.equal(a[k], b[k]) for k in a), (key, net)
        assert torch.equal(base.rng["loop"], other.rng["loop"]), key
        assert base.rng["numpy"] == other.rng["numpy"], key


@pytest.mark.parametrize(
    "key,value",
    [("optim.lr", 0.05), ("run.seed", 7), ("model.name", "preact_resnet18"),
     ("dividemix.warmup_epochs", 2), ("optim.warmup_batch_size", 16), ("noise.rate", 0.2)],
)  # fmt: skip
def test_a_setting_the_warmup_reads_changes_the_key(tmp_path, key, value):
    assert shared.warmup_key(tiny(tmp_path, **{key: value})) != shared.warmup_key(tiny(tmp_path))


def test_a_trial_on_a_shared_warmup_ends_bit_identical_to_one_that_trained_its_own(
    tmp_path, monkeypatch
):
    a = tiny(tmp_path, **{"dividemix.lambda_u": 0.0})
    b = tiny(
        tmp_path, **{"dividemix.lambda_u": 25.0, "dividemix.T": 0.7, "dividemix.p_threshold": 0.6}
    )
    store = (pafs.LocalFileSystem(), str(tmp_path / "sweep"))
    import dmx.train

    trained = []
    real = dmx.train.setup
    monkeypatch.setattr(
        dmx.train, "setup", lambda cfg, **kw: trained.append(cfg) or real(cfg, **kw)
    )
    warm_a = shared.shared_warmup_state(a, store)
    warm_b = shared.shared_warmup_state(b, store)  # loaded, not trained
    assert len(trained) == 1 and warm_a.epoch == warm_b.epoch == 1
    assert warm_b.config == b.resolved().to_flat() and warm_b.mlflow_run_id == ""
    folder = tmp_path / "sweep" / shared.SHARED_DIR / shared.warmup_key(b)
    assert (folder / "ckpt-0001.pt").is_file() and (folder / "ckpt-0001.pt.sha256").is_file()

    own = fit(b)
    on_shared = fit(b, state=warm_b)
    strip = [{k: v for k, v in m.items() if k not in TIMING} for m in own.metrics_history]
    strip_shared = [
        {k: v for k, v in m.items() if k not in TIMING} for m in on_shared.metrics_history
    ]
    assert strip_shared == strip
    for net in ("net1", "net2"):
        mine, theirs = getattr(own, net), getattr(on_shared, net)
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_no_warmup_nothing_to_share(tmp_path):
    cfg = tiny(tmp_path, **{"dividemix.warmup_epochs": 0})
    assert shared.shared_warmup_state(cfg, (pafs.LocalFileSystem(), str(tmp_path))) is None
