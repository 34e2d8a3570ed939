"""The real-world recipes' differences, each wired inside the one loop (issue 13): class-balanced
resampling per epoch and per net, the division of one net's subset training the other, the
labelled-only MixMatch (no Lu, no ramp), best clean-validation checkpoints and their ensemble on
the test set, top-5 and extra test sets, the peer's start-of-epoch snapshot; and a bit-exact
resume in the middle of such a run.

A small "real-world" dataset stands in for Clothing1M here: digits with their given labels made
noisy ONCE (the files' labels are already noisy; the truth is known for half of them), a clean
validation split and a second test set, registered as a dmx dataset.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

import dmx.steps
import dmx.train
from dmx import data as dmx_data
from dmx.data import UNKNOWN, ImageDataset, Split
from dmx.data.digits import load_digits_dataset
from dmx.presets import get_preset
from dmx.reporting import EpochCallback
from dmx.state import TrainState
from dmx.train import fit

NUM_BATCHES = 3
BATCH = 16


def _real_world_digits(root, **_) -> ImageDataset:
    d = load_digits_dataset()
    rng = np.random.default_rng(7)
    true = d.train_labels.numpy()
    flip = rng.random(len(true)) < 0.3
    given = np.where(flip, (true + 1 + rng.integers(0, 9, len(true))) % 10, true)
    truth = np.where(np.arange(len(true)) % 2 == 0, true, UNKNOWN)  # half were checked
    x_test, y_test = d.test.images, d.test.labels
    return ImageDataset(
        name="digits_rw",
        train=Split(torch.from_numpy(given), images=d.train.images),
        test=Split(y_test[200:], images=x_test[200:]),
        val=Split(y_test[:200], images=x_test[:200]),  # CLEAN validation split
        extra_tests={"second": Split(y_test[:100], images=x_test[:100])},
        train_truth=torch.from_numpy(truth),
        num_classes=10,
        class_names=d.class_names,
        mean=d.mean,
        std=d.std,
        transforms=d.transforms,
        channels=1,
    )


@pytest.fixture
def rw(monkeypatch, tmp_path):
    monkeypatch.setitem(dmx_data.DATASETS, "digits_rw", _real_world_digits)
    return tmp_path


def rw_cfg(tmp_path, **overrides):
    """The Clothing1M preset's loop switches on the digits stand-in, tiny."""
    base = get_preset("clothing1m").with_overrides(
        {
            "data.dataset": "digits_rw",
            "data.root": str(tmp_path),
            "model.name": "small_cnn",
            "model.pretrained": False,
            "run.device": "cpu",
            "run.epochs": 3,
            "dividemix.num_batches": NUM_BATCHES,
            "optim.batch_size": BATCH,
            "optim.warmup_batch_size": 2 * BATCH,
            "optim.eval_batch_size": 256,
            "optim.lr": 0.02,
            "optim.lr_decay_epochs": [2],
        }
    )
    return base.with_overrides(overrides)


def _wrap(monkeypatch, module, name, events):
    real = getattr(module, name)
    signature = inspect.signature(real)

    def wrapper(*args, **kwargs):
        bound = dict(signature.bind(*args, **kwargs).arguments)
        result = real(*args, **kwargs)
        events.append((name, bound, result))
        return result

    monkeypatch.setattr(module, name, wrapper)


def test_balanced_subsets_per_net_and_the_division_of_one_trains_the_other(rw, monkeypatch):
    events: list = []
    for name in ("divide_net", "dividemix_epoch", "warmup_epoch"):
        _wrap(monkeypatch, dmx.train, name, events)
    _wrap(monkeypatch, dmx.steps, "balanced_subset", events)  # warmup's
    _wrap(monkeypatch, dmx.train, "balanced_subset", events)  # the division's
    reported = []
    fit(rw_cfg(rw), reporter=EpochCallback(lambda e, m, s: reported.append(m)))
    subsets = [e for e in events if e[0] == "balanced_subset"]
    # warmup (epoch 0): each net its own balanced subset of num_batches x warmup batch
    warm = [e for e in events if e[0] == "warmup_epoch"]
    assert len(warm) == 2
    labels = _real_world_digits(None).train_labels
    warm_sets = [s[2] for s in subsets[:2]]
    for subset in warm_sets:
        assert len(subset) == NUM_BATCHES * 2 * BATCH and len(set(subset.tolist())) == len(subset)
        counts = np.bincount(labels[subset].numpy(), minlength=10)
        assert counts.max() <= math.ceil(len(subset) / 10)  # the reference's per-class quota
    assert set(warm_sets[0].tolist()) != set(warm_sets[1].tolist())
    # DivideMix epochs: each net divides its own fresh subset; the PEER trains on it
    divisions = [e for e in events if e[0] == "divide_net"]
    trains = [e for e in events if e[0] == "dividemix_epoch"]
    assert len(divisions) == 4 and len(trains) == 4  # epochs 1 and 2, two nets each
    for epoch in range(2):
        d1, d2 = divisions[2 * epoch][2], divisions[2 * epoch + 1][2]
        assert d1.history is None and d2.history is None  # no loss history across subsets
        for div in (d1, d2):
            assert len(div.indices) == NUM_BATCHES * BATCH
            counts = np.bincount(labels[div.indices].numpy(), minlength=10)
            assert counts.max() <= math.ceil(NUM_BATCHES * BATCH / 10)
        assert set(d1.indices.tolist()) != set(d2.indices.tolist())
        t1, t2 = trains[2 * epoch], trains[2 * epoch + 1]
        assert t1[1]["division"] is d2 and t2[1]["division"] is d1
    # the subsets differ from epoch to epoch
    assert set(divisions[0][2].indices.tolist()) != set(divisions[2][2].indices.tolist())
    # metrics: clean detection only where the truth is known; labelled counts within the subset
    for m in reported[1:]:
        assert 0 <= m["labeled_net1"] <= NUM_BATCHES * BATCH
        assert 0 <= m["auc_net1"] <= 1
    assert reported[0]["noise_rate"] == pytest.approx(
        100 * _known_noise_rate(_real_world_digits(None)), abs=1e-9
    )


def _known_noise_rate(ds: ImageDataset) -> float:
    truth = ds.train_truth.numpy()
    known = truth >= 0
    return float(np.mean(ds.train_labels.numpy()[known] != truth[known]))


def test_labelled_only_mixmatch_has_no_lu_and_no_ramp(rw, monkeypatch):
    """Train_clothing1M.py: logits = net(mixed_input[:2B]); loss = Lx + penalty. The unlabelled
    views still take part (co-guessed targets, mixing partners)."""
    log: list = []
    for name in ("mse_consistency", "co_guess", "mixup", "soft_cross_entropy"):
        _wrap(monkeypatch, dmx.steps.mixmatch, name, log)
    forwards = []
    real_call = dmx.steps.MixMatchStep.__call__

    def spy_call(self, bx, x, u, weights, *, lam_u, index):
        orig_forward = self.net.forward

        def forward(inp):
            out = orig_forward(inp)
            if torch.is_grad_enabled():
                forwards.append((len(bx), len(u[0]) if u is not None else 0, len(inp)))
            return out

        self.net.forward = forward
        try:
            return real_call(self, bx, x, u, weights, lam_u=lam_u, index=index)
        finally:
            del self.net.forward

    monkeypatch.setattr(dmx.steps.MixMatchStep, "__call__", spy_call)
    reported = []
    fit(rw_cfg(rw, **{"run.epochs": 2}), reporter=EpochCallback(lambda e, m, s: reported.append(m)))
    assert [n for n, *_ in log if n == "mse_consistency"] == []  # no Lu at all
    assert any(n == "co_guess" for n, *_ in log)  # partners are still co-guessed
    mixes = [r for n, _, r in log if n == "mixup"]
    assert forwards and all(rows == 2 * b for b, u, rows in forwards)  # only the first 2B rows
    assert all(u > 0 for _, u, _ in forwards)  # the mix drew from the unlabelled views too
    assert len(mixes) == len(forwards)
    assert "lu_net1" not in reported[1] and reported[1]["lambda_u_eff"] == 0.0


def test_best_clean_val_checkpoints_make_the_final_test(rw, monkeypatch):
    reported: list[dict] = []
    weights_per_epoch: list[tuple[dict, dict]] = []

    def record(epoch, m, state: TrainState):
        reported.append(dict(m))
        weights_per_epoch.append(
            tuple({k: v.clone() for k, v in net.items()} for net in (state.net1, state.net2))
        )

    used: list = []
    real_final = dmx.train.final_test

    def final(state, nets, loop):
        used.append((state.best_net1, state.best_net2))
        return real_final(state, nets, loop)

    monkeypatch.setattr(dmx.train, "final_test", final)
    state = fit(rw_cfg(rw, **{"run.epochs": 4}), reporter=EpochCallback(record))
    assert len(used) == 1  # once, at the last epoch
    for k in (1, 2):
        accs = [m[f"clean_val_acc_net{k}"] for m in reported]
        best_epoch = int(np.argmax(accs))  # the first of equal bests, as `acc > best_acc`
        assert state.best_clean_val[k - 1] == pytest.approx(max(accs))
        assert reported[-1][f"best_clean_val_acc_net{k}"] == pytest.approx(max(accs))
        kept = (state.best_net1, state.best_net2)[k - 1]
        at_best = weights_per_epoch[best_epoch][k - 1]
        assert all(torch.equal(kept[key], at_best[key]) for key in kept)
    last = reported[-1]
    assert "final_test_acc" in last and "final_test_top5" in last
    assert "final_test_acc" not in reported[0]
    # the per-epoch clean validation accuracies and the extra test set, with top-5
    for m in reported:
        for key in ("clean_val_acc", "clean_val_top5", "test_acc", "test_top5", "second_acc"):
            assert key in m, key


def test_final_test_is_the_ensemble_of_the_best_nets(rw):
    """final_test_acc equals the test accuracy of the kept best nets, rebuilt from the state and
    evaluated on their own (sum of logits)."""
    cfg = rw_cfg(rw, **{"run.epochs": 3})
    reported = []
    state = fit(cfg, reporter=EpochCallback(lambda e, m, s: reported.append(m)))
    best = [state.best_net1, state.best_net2]
    from dmx.evaluate import predict_logits
    from dmx.prepare import load_train_data, prepare_data
    from dmx.train import build_nets

    prepared = prepare_data(cfg.resolved())
    data = load_train_data(cfg.resolved(), prepared, torch.device("cpu"))
    nets = build_nets(cfg.resolved(), prepared, torch.device("cpu"), starting_weights=False)
    for net, w in zip(nets, best):
        net.load_state_dict(w)
    logits = sum(predict_logits(n, data, "test", cfg.resolved()) for n in nets)
    labels = data.eval_labels("test")
    expected = 100.0 * float((logits.argmax(1) == labels).float().mean())
    assert reported[-1]["final_test_acc"] == pytest.approx(expected)


def test_best_on_clean_val_needs_a_clean_validation_split(tmp_path):
    cfg = get_preset("digits-sym-0.5").with_overrides(
        {
            "run.best_on_clean_val": True,
            "run.epochs": 1,
            "data.subset": 64,
            "run.device": "cpu",
            "noise.cache_dir": str(tmp_path),
        }  # fmt: skip
    )
    with pytest.raises(ValueError, match="needs a dataset with a clean validation split"):
        fit(cfg)


def test_peer_snapshot_gives_net2_the_start_of_epoch_net1(rw, monkeypatch):
    real = dmx.train.dividemix_epoch
    states = []

    def wrapper(net, peer, optimizer, loop, **kw):
        states.append({k: v.clone() for k, v in peer.state_dict().items()})
        return real(net, peer, optimizer, loop, **kw)

    monkeypatch.setattr(dmx.train, "dividemix_epoch", wrapper)
    starts = []
    real_divide = dmx.train._divide

    def divide(net, k, state, loop):
        if k == 0:
            starts.append({key: v.clone() for key, v in net.state_dict().items()})
        return real_divide(net, k, state, loop)

    monkeypatch.setattr(dmx.train, "_divide", divide)
    fit(rw_cfg(rw, **{"run.epochs": 2, "dividemix.peer_snapshot": True}))
    # epoch 1: net1 trained against net2; net2 against net1 AS IT WAS at the start of the epoch
    net1_at_start = starts[0]
    peer_of_net2 = states[1]
    assert all(torch.equal(net1_at_start[k], peer_of_net2[k]) for k in net1_at_start)
    # and without the switch, net2's peer is the updated net1
    starts.clear()
    states.clear()
    fit(rw_cfg(rw, **{"run.epochs": 2}))
    assert not all(torch.equal(starts[0][k], states[1][k]) for k in starts[0])


def test_a_resampling_run_resumes_bit_for_bit(rw):
    cfg = rw_cfg(rw, **{"run.epochs": 4})
    full: list[dict] = []
    states: dict[int, TrainState] = {}

    def keep(epoch, m, state):
        full.append(m)
        if epoch == 1:
            import copy

            states[1] = copy.deepcopy(state)

    fit(cfg, reporter=EpochCallback(keep))
    resumed: list[dict] = []
    fit(cfg, state=states[1], reporter=EpochCallback(lambda e, m, s: resumed.append(m)))

    def strip(m):
        return {k: v for k, v in m.items() if k not in ("epoch_seconds", "images_per_second")}

    assert [strip(m) for m in resumed] == [strip(m) for m in full[2:]]


def test_balanced_subset_is_the_reference_walk():
    """dataloader_clothing1M.py, mode='all': walk a shuffled list, keep a sample while its class
    has fewer than num_samples/14 and the subset fewer than num_samples."""
    from dmx.batches import balanced_subset

    labels = torch.from_numpy(np.random.default_rng(3).integers(0, 5, 200))
    for size in (20, 37, 150, 500):
        got = balanced_subset(labels, size, 5, torch.Generator().manual_seed(11))
        order = torch.randperm(200, generator=torch.Generator().manual_seed(11)).tolist()
        kept, count = [], [0] * 5
        for i in order:
            c = int(labels[i])
            if count[c] < size / 5 and len(kept) < size:
                kept.append(i)
                count[c] += 1
        assert got.tolist() == kept, size
