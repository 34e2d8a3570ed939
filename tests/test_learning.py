"""Does DivideMix actually learn through the noise? A seeded run on a small real dataset.

scikit-learn's bundled digits with 50% symmetric noise: DivideMix must beat plain cross-entropy
(the same two networks, the same epochs, warmup all the way) and its division must find the wrong
labels (clean-detection AUC well above chance).
"""

import pytest

from dmx.presets import get_preset
from dmx.train import fit

EPOCHS = 12


@pytest.mark.slow
def test_dividemix_beats_cross_entropy_on_noisy_digits(tmp_path):
    cfg = get_preset("digits-sym-0.5").with_overrides(
        {
            "run.epochs": EPOCHS,
            "dividemix.warmup_epochs": 3,
            "optim.lr_decay_epochs": [],  # constant lr: cross-entropy keeps fitting the noise
            "optim.batch_size": 64,
            "optim.warmup_batch_size": 128,
            "noise.cache_dir": str(tmp_path),
        }
    )
    dividemix = fit(cfg).metrics_history
    ce = fit(cfg.with_overrides({"dividemix.warmup_epochs": EPOCHS})).metrics_history
    dm_acc = sum(m["test_acc"] for m in dividemix[-3:]) / 3  # mean of the last 3 epochs
    ce_acc = sum(m["test_acc"] for m in ce[-3:]) / 3
    auc = (dividemix[-1]["auc_net1"] + dividemix[-1]["auc_net2"]) / 2
    print(f"digits sym-0.5: DivideMix {dm_acc:.2f}% vs CE {ce_acc:.2f}%, AUC {auc:.3f}")
    assert dm_acc > ce_acc + 2.0
    assert auc > 0.9
    assert dividemix[-1]["noise_rate"] == pytest.approx(45, abs=5)  # % : 0.5 * (1 - 1/10)
