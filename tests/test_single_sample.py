"""Batches of one sample: every path that can produce one, with a count that produces it.

BatchNorm in train mode cannot normalise a single value per channel. small_cnn on 8x8 digits ends
at a 1x1 map, so a lone sample would crash it (a deterministic crash that every resume and every
Tune retry would hit again); the reference's PreAct ResNet-18 at 32 px ends at 4x4 and trains on
such a batch, so there dmx keeps the reference's batches untouched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmx.batches import index_batches, trains_on_one_sample
from dmx.data import Split, Transforms
from dmx.data.device import DeviceData
from dmx.data.views import LoopSplits
from dmx.evaluate import Division
from dmx.models import create_model
from dmx.prepare import load_train_data, prepare_data
from dmx.presets import get_preset
from dmx.train import Loop, dividemix_epoch, warmup_epoch


def digits_loop(tmp_path, *, subset: int, batch: int = 8, **overrides):
    cfg = get_preset("digits-sym-0.5").with_overrides(
        {
            "data.subset": subset,
            "data.test_subset": 20,
            "noise.cache_dir": str(tmp_path),
            "optim.batch_size": batch,
            "optim.warmup_batch_size": batch,
            "run.device": "cpu",
            **overrides,
        }
    )
    cfg = cfg.resolved()
    prepared = prepare_data(cfg)
    data = load_train_data(cfg, prepared, torch.device("cpu"))
    torch.manual_seed(0)
    nets = [create_model("small_cnn", num_classes=10, in_channels=1) for _ in range(2)]
    opt = torch.optim.SGD(nets[0].parameters(), lr=0.01, momentum=0.9)
    loop = Loop(
        cfg,
        data,
        gen=torch.Generator().manual_seed(0),
        np_rng=np.random.default_rng(0),
        single_sample_ok=trains_on_one_sample(nets[0], data),
    )
    return cfg, data, nets, opt, loop


def division_with(n: int, labeled: np.ndarray) -> Division:
    mask = np.zeros(n, dtype=bool)
    mask[labeled] = True
    return Division(
        indices=np.arange(n),
        losses=torch.zeros(n),
        history=torch.zeros(1, n),
        clean_prob=np.where(mask, 0.9, 0.1),
        labeled_mask=mask,
    )


def test_the_probe_tells_which_nets_cannot_train_on_one_sample(tmp_path):
    _, data, nets, _, loop = digits_loop(tmp_path, subset=40)
    assert loop.single_sample_ok is False  # small_cnn on 8x8: 1x1 map before the last BatchNorm
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nets[0].train()(data.plain_view(data.train_x[:1]))  # what the probe protects against
    preact = create_model("preact_resnet18", num_classes=10, in_channels=3)
    two = Split(
        torch.zeros(2, dtype=torch.int64), images=torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    )
    cifar_like = DeviceData(
        LoopSplits(two, np.zeros(2, dtype=np.int64), {}),
        num_classes=10,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        transforms=Transforms(),
        device=torch.device("cpu"),
    )
    before = {k: v.clone() for k, v in preact.state_dict().items()}
    rng = torch.get_rng_state()
    assert trains_on_one_sample(preact, cifar_like) is True  # 4x4 maps at 32 px: the reference's
    after = preact.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched
    assert torch.equal(rng, torch.get_rng_state())  # no random stream consumed


def test_index_batches_merges_a_lone_last_sample_only_when_asked():
    perm = torch.arange(17)
    assert [len(b) for b in index_batches(perm, 8)] == [8, 8, 1]  # the reference's loader
    merged = index_batches(perm, 8, merge_single=True)
    assert [len(b) for b in merged] == [8, 9]
    assert torch.equal(torch.cat(merged), perm)
    assert [len(b) for b in index_batches(torch.arange(1), 8, merge_single=True)] == [1]


def test_warmup_with_a_lone_last_sample(tmp_path):
    # 17 training samples in batches of 8: the last batch would hold one sample.
    _, data, nets, opt, loop = digits_loop(tmp_path, subset=17)
    assert len(data.noisy_y) == 17
    out, seen = warmup_epoch(nets[0], opt, loop, epoch=0, net_id=0)
    assert seen == 17 and np.isfinite(out["warmup_loss_net1"])


@pytest.mark.parametrize(
    "num_labeled,why",
    [
        (20, "unlabelled count 2*8 + 1: its last batch of a pass holds one sample"),
        (36, "unlabelled count 1: every unlabelled batch is that one sample"),
        (1, "labelled count 1: the only labelled batch is one sample"),
        (9, "labelled count 8 + 1: the last labelled batch holds one sample"),
    ],
)
def test_dividemix_epoch_with_a_lone_sample(tmp_path, num_labeled, why):
    _, data, nets, opt, loop = digits_loop(tmp_path, subset=37)
    n = len(data.noisy_y)
    assert n == 37
    division = division_with(n, np.arange(num_labeled))
    out, images = dividemix_epoch(nets[0], nets[1], opt, loop, division=division, epoch=5, net_id=0)
    assert np.isfinite(out["lx_net1"]) and np.isfinite(out["lu_net1"]), why
    # Every labelled sample was trained on exactly once, in two views, with unlabelled partners.
    assert images >= 2 * num_labeled + 2, why


def test_fit_wires_the_probe_into_the_loop(tmp_path, monkeypatch):
    """fit itself (not a hand-built Loop) merges a lone unlabelled sample: a division whose
    unlabelled count is 2*8 + 1 crashed every resume and retry before (issue 11, item 1)."""
    import dmx.train
    from dmx.train import fit

    cfg, data, _, _, _ = digits_loop(tmp_path, subset=40, **{"run.epochs": 2})
    cfg = cfg.with_overrides({"dividemix.warmup_epochs": 1})
    n = len(data.noisy_y)

    def lone_unlabelled(net, history, data, cfg, *, seed, subset=None):
        return division_with(n, np.arange(n - 17))  # 17 unlabelled = 2 * 8 + 1

    monkeypatch.setattr(dmx.train, "divide_net", lone_unlabelled)
    seen = []
    real = dmx.train.dividemix_epoch

    def spy(net, peer, optimizer, loop, **kw):
        seen.append(loop.single_sample_ok)
        return real(net, peer, optimizer, loop, **kw)

    monkeypatch.setattr(dmx.train, "dividemix_epoch", spy)
    state = fit(cfg)
    assert seen == [False, False] and state.epoch == 2
    assert np.isfinite(state.metrics_history[-1]["lu_net1"])


def test_a_warmup_batch_of_one_is_refused_for_nets_that_cannot_take_it(tmp_path):
    from dmx.train import fit

    cfg, *_ = digits_loop(tmp_path, subset=20, batch=1, **{"run.epochs": 1})
    with pytest.raises(ValueError, match=r"warmup_batch_size=1: small_cnn cannot .* 2 or more"):
        fit(cfg)


def test_dmx_train_on_three_samples_runs_through_warmup_and_dividemix(tmp_path):
    """`dmx train --preset digits-sym-0.5 --subset 3` died in warmup (issue 11, item 1)."""
    from dmx.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "digits-sym-0.5",
            "--subset",
            "3",
            "--epochs",
            "7",
            "--out",
            str(out),
            "--no-mlflow",
            "--quiet",
            "--device",
            "cpu",
            "--set",
            f"noise.cache_dir={tmp_path / 'noise'}",
        ]  # fmt: skip
    )
    assert code == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 7
