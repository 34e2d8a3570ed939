"""Hyperparameter sweeps on Ray Tune + Optuna: the only package that imports Ray and Optuna.

- `space`: the search space (`--search KEY=LOW:HIGH[:log]` / `KEY=A,B,C`), no Ray;
- `trial`: the Tune trainable (one `dmx.train.fit` run, resumed from Tune's checkpoints);
- `recovery`: a restarted trial's state from the newest intact checkpoint; `warmup`: one
  warmup per distinct warmup, shared by the trials;
- `driver`: run (a search, or a grid of presets x seeds), resume and summarise a sweep; `tuner`:
  its Tuner (Optuna TPE + ASHA, Repeater for seeds, or a grid); `record`: its MLflow record;
  `spec`: how a sweep runs (`SweepOptions`) and what it was started with (`SweepSpec`, stored
  beside it); `lock`: one driver per sweep; `callbacks`: the driver's end-of-trial bookkeeping.
"""

from dmx.sweep.callbacks import MlflowStatusCallback
from dmx.sweep.driver import (
    METRIC,
    SweepError,
    SweepResult,
    best_result,
    resume_sweep,
    run_grid,
    run_sweep,
)
from dmx.sweep.space import (
    DEFAULT_SEARCH,
    FIXED_SECTIONS,
    Dimension,
    SearchSpaceError,
    build_search_space,
    parse_dimension,
    preset_point,
)
from dmx.sweep.spec import SweepOptions, SweepSpec, normalize_storage
from dmx.sweep.trial import TIME_ATTR, TrialContext, dm_epoch, train_trial

__all__ = [
    "DEFAULT_SEARCH",
    "FIXED_SECTIONS",
    "METRIC",
    "Dimension",
    "MlflowStatusCallback",
    "SearchSpaceError",
    "SweepError",
    "SweepOptions",
    "SweepResult",
    "SweepSpec",
    "TIME_ATTR",
    "TrialContext",
    "best_result",
    "build_search_space",
    "dm_epoch",
    "normalize_storage",
    "parse_dimension",
    "preset_point",
    "resume_sweep",
    "run_grid",
    "run_sweep",
    "train_trial",
]
