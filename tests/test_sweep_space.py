"""Search-space checks that need no Ray: settings a sweep fixes cannot be searched."""

from __future__ import annotations

import pytest

from dmx.presets import get_preset
from dmx.sweep.space import FIXED_KEYS, SearchSpaceError, parse_dimension

BASE = get_preset("digits-sym-0.5")


@pytest.mark.parametrize(
    "spec", ["run.keep_checkpoints=1,3", "run.epochs=10:20", "run.device=cpu,cuda", "preset=a,b"]
)
def test_settings_a_sweep_fixes_are_refused_naming_why_and_the_fix(spec):
    key = spec.partition("=")[0]
    with pytest.raises(SearchSpaceError, match=rf"{key} is fixed .*--set {key}=VALUE"):
        parse_dimension(spec, BASE)
    assert key in FIXED_KEYS


@pytest.mark.parametrize(
    "spec", ["run.seed=1,2,3", "optim.lr=0.001:0.1:log", "model.name=small_cnn,preact_resnet18"]
)
def test_settings_each_trial_uses_can_be_searched(spec):
    assert parse_dimension(spec, BASE).key == spec.partition("=")[0]


def test_the_driver_refuses_a_subset_larger_than_the_data(tmp_path):
    """Checked on the driver (prepare_noisy_labels), not by every trial and its retries."""
    from dmx.prepare import prepare_noisy_labels

    cfg = BASE.with_overrides({"data.subset": 5000, "noise.cache_dir": str(tmp_path)})
    with pytest.raises(ValueError, match=r"data.subset=5000 is larger than .*\(1397 samples\)"):
        prepare_noisy_labels(cfg)
