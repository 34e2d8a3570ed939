"""The Clothing1M and WebVision presets end to end on fixtures in their exact distributed layouts
(real JPEG files, the list files), streamed through DataLoader workers, with a tiny model: every
recipe switch of the preset runs, and a Clothing1M run resumes bit for bit in its middle."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from dmx.presets import get_preset
from dmx.reporting import EpochCallback
from dmx.train import fit
from tests.fixtures import write_clothing1m_fixture, write_webvision_fixture

TIMING = {"epoch_seconds", "images_per_second"}
TINY = {
    "model.name": "small_cnn",
    "model.pretrained": False,
    "data.image_size": 32,  # resize follows the recipe's proportion (256 / 224)
    "data.pipeline": "stream",
    "data.num_workers": 2,
    "run.device": "cpu",
    "optim.batch_size": 4,
    "optim.warmup_batch_size": 8,
    "optim.eval_batch_size": 8,
}


def clothing(tmp_path, **overrides):
    root = write_clothing1m_fixture(tmp_path / "clothing1m")
    return get_preset("clothing1m").with_overrides(
        {"data.root": str(root), **TINY, "run.epochs": 3, "dividemix.num_batches": 2, **overrides}
    )


def _run(cfg, **kw):
    seen: list[dict] = []
    state = fit(cfg, reporter=EpochCallback(lambda e, m, s: seen.append(m)), **kw)
    return state, seen


def test_clothing1m_preset_runs_its_recipe_on_the_distributed_layout(tmp_path):
    state, seen = _run(clothing(tmp_path))
    warm, *dm = seen
    assert warm["phase"] == 0 and all(m["phase"] == 1 for m in dm)
    # balanced resampling: each division holds at most num_batches x batch samples
    assert all(m["labeled_net1"] <= 2 * 4 and m["labeled_net2"] <= 2 * 4 for m in dm)
    # labelled-only MixMatch: no Lu
    assert all("lu_net1" not in m and m["lambda_u_eff"] == 0 for m in dm)
    # the clean validation split per net every epoch, best nets kept, final test on them
    for m in seen:
        assert {"clean_val_acc_net1", "clean_val_acc_net2", "test_acc", "test_top5"} <= set(m)
    assert "final_test_acc" in seen[-1] and "final_test_top5" in seen[-1]
    assert state.best_net1 and state.best_net2
    # the truth is known for 6 of the 20 training images (clean_label_kv.txt), 2 of them wrong
    assert warm["noise_rate"] == pytest.approx(100 * 2 / 6)


@pytest.mark.slow
def test_a_clothing1m_run_resumes_bit_for_bit_in_its_middle(tmp_path):
    cfg = clothing(tmp_path, **{"run.epochs": 4})
    saved = {}

    def keep(epoch, m, state):
        if epoch == 1:
            saved["state"] = copy.deepcopy(state)

    full = fit(cfg, reporter=EpochCallback(keep)).metrics_history
    resumed = fit(cfg.with_overrides({"data.num_workers": 0}), state=saved["state"])

    def strip(history):  # NaN == NaN (an AUC of a one-class division is NaN)
        return [{k: repr(v) for k, v in m.items() if k not in TIMING} for m in history]

    assert strip(resumed.metrics_history) == strip(full)
    assert len(full) == 4


@pytest.mark.filterwarnings("ignore:Classes .* never occur")  # 4 of the 50 classes
def test_webvision_preset_reports_top1_and_top5_on_webvision_and_imagenet(tmp_path):
    root = write_webvision_fixture(tmp_path / "webvision")
    cfg = get_preset("webvision-50").with_overrides(
        {"data.root": str(root), **TINY, "run.epochs": 2}
    )
    state, seen = _run(cfg)
    for m in seen:
        for key in ("test_acc", "test_top5", "imagenet_acc", "imagenet_top5"):
            assert key in m and np.isfinite(m[key]), key
        assert m["imagenet_top5"] >= m["imagenet_acc"]
    dm = seen[-1]
    assert dm["phase"] == 1 and "lu_net1" not in dm  # the labelled-only MixMatch
    assert "noise_rate" not in dm and "auc_net1" not in dm  # web labels: no truth known
    assert 0 < dm["labeled_net1"] + dm["labeled_net2"] <= 2 * 16  # divides the full set
