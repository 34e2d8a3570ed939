"""Old import path of the sweep machinery (before dmx/sweep/). Ray Tune pickles a sweep's callbacks
and trial-name function by module path, so a sweep started before the split still names
`dmx.tune.MlflowStatusCallback` and `dmx.tune.trial_dirname`; these aliases let `--resume` load it.
New code imports `dmx.sweep`."""

from dmx.sweep.callbacks import MlflowStatusCallback
from dmx.sweep.driver import trial_dirname

__all__ = ["MlflowStatusCallback", "trial_dirname"]
