"""The search space of a sweep: `--search KEY=LOW:HIGH[:log]` / `KEY=A,B,C` specs parsed against
a base config into Optuna distributions, and the base config's own point (evaluated first).

No Ray here: the command line parses and checks a space before any cluster starts."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from dmx.config import Config, ConfigError

# Paper practice (DESIGN §5): lambda_u 0..150 (appendix table), T around 0.5, p_threshold 0.5/0.6.
DEFAULT_SEARCH = (
    "dividemix.lambda_u=0:150",
    "dividemix.T=0.2:1.0",
    "dividemix.p_threshold=0.3:0.9",
)


class SearchSpaceError(ValueError):
    """An invalid --search dimension; the message names it and shows the expected form."""


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a float/int range (optionally log-scaled) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.choices:
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(
            float(self.low), float(self.high), log=self.log
        )

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high

    def spec(self) -> str:
        """The `key=...` text this dimension parses from (stored with the sweep)."""
        if self.choices:
            return f"{self.key}=" + ",".join(str(c) for c in self.choices)
        return f"{self.key}={self.low}:{self.high}" + (":log" if self.log else "")


_SPEC_HELP = "expected KEY=LOW:HIGH, KEY=LOW:HIGH:log or KEY=A,B,C (e.g. dividemix.alpha=0.5:8:log)"

# Settings fixed for the whole sweep: the driver makes ONE noisy-label file (noise.*) and every
# trial trains and is judged on ONE data set and validation split (data.*); Tune keeps
# run.keep_checkpoints checkpoints of every trial (CheckpointConfig), ASHA's rungs are laid out
# over run.epochs, and Ray, not the config, gives each trial its device. A searched value of
# these would be recorded per trial but never used, so searching them is refused.
FIXED_SECTIONS = ("noise", "data")
FIXED_KEYS = {
    "run.epochs": "ASHA's rungs and the sweep's length are laid out over it",
    "run.keep_checkpoints": "Tune keeps the same number of checkpoints for every trial",
    "run.device": "Ray gives each trial its device (--gpus-per-trial)",
    "preset": "it names where the base config came from",
}


def _refuse_fixed(spec: str, key: str) -> None:
    section = key.partition(".")[0]
    if section in FIXED_SECTIONS:
        raise SearchSpaceError(
            f"--search {spec!r}: {section}.* settings are fixed for a whole sweep (the driver "
            "makes one noisy-label file and one validation split that every trial shares), so a "
            f"searched {key} would not be used. Run one sweep per value instead "
            f"(--set {key}=VALUE)."
        )
    if key in FIXED_KEYS:
        raise SearchSpaceError(
            f"--search {spec!r}: {key} is fixed for a whole sweep ({FIXED_KEYS[key]}), so a "
            f"searched value would not be used. Set it for every trial with --set {key}=VALUE."
        )


def parse_dimension(spec: str, base: Config) -> Dimension:
    """Parse `KEY=LOW:HIGH[:log]` or `KEY=A,B,C` against `base` (the key's type decides int vs
    float; both ends and every choice must be valid config values)."""
    key, sep, text = spec.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise SearchSpaceError(f"--search {spec!r}: {_SPEC_HELP}.")
    _refuse_fixed(spec, key)
    # "auto" fields are read at their derived values: their type decides int vs float.
    base = base.resolved()
    flat = base.to_flat()
    if key not in flat:
        try:
            base.with_overrides({key: "0"})
        except ConfigError as exc:
            raise SearchSpaceError(f"--search {spec!r}: {exc}") from None
    current = flat.get(key)
    is_int = isinstance(current, int) and not isinstance(current, bool)
    if "," in text or isinstance(current, (bool, str)):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            choices = tuple(base.with_overrides({key: t}).to_flat()[key] for t in items)
        except ConfigError as exc:
            raise SearchSpaceError(f"--search {spec!r}: {exc}") from None
        if len(set(map(str, choices))) < 2:
            raise SearchSpaceError(f"--search {spec!r}: give at least two different choices.")
        return Dimension(key, choices=choices)
    parts = text.split(":")
    log = len(parts) == 3 and parts[2].strip().lower() == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise SearchSpaceError(f"--search {spec!r}: {_SPEC_HELP}.")
    try:
        low, high = (int(p) if is_int else float(p) for p in parts[:2])
    except ValueError:
        kind = "integers" if is_int else "numbers"
        raise SearchSpaceError(f"--search {spec!r}: {key} needs {kind}; {_SPEC_HELP}.") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SearchSpaceError(
            f"--search {spec!r}: both ends of a range must be finite numbers (got {low}:{high}); "
            "write LOW:HIGH with finite numbers."
        )
    if low >= high:
        raise SearchSpaceError(
            f"--search {spec!r}: the range is empty or inverted ({low} >= {high}); "
            f"write LOW:HIGH with LOW < HIGH."
        )
    if log and low <= 0:
        raise SearchSpaceError(f"--search {spec!r}: a log range needs LOW > 0 (got {low}).")
    for end in (low, high):
        try:
            base.with_overrides({key: end})
        except ConfigError as exc:
            raise SearchSpaceError(
                f"--search {spec!r}: the range end {end} is invalid: {exc}"
            ) from None
    return Dimension(key, low=low, high=high, log=log, integer=is_int)


def build_search_space(
    base: Config, extra: Iterable[str] = (), *, defaults: bool = True
) -> dict[str, Dimension]:
    """The default dimensions (λu, T, p_threshold) plus `extra` specs; a later spec of the same
    key replaces the earlier one (so `--search dividemix.lambda_u=0:50` narrows a default)."""
    specs = list(DEFAULT_SEARCH if defaults else ()) + list(extra)
    if not specs:
        raise SearchSpaceError("The search space is empty: give at least one --search KEY=...")
    space: dict[str, Dimension] = {}
    for spec in specs:
        dim = parse_dimension(spec, base)
        space[dim.key] = dim
    return space


def preset_point(base: Config, space: Mapping[str, Dimension]) -> dict[str, Any] | None:
    """The base config's own values of the searched keys (the paper's setting), evaluated first;
    None (with a warning) when one of them lies outside its range."""
    flat = base.resolved().to_flat()
    point = {key: flat[key] for key in space}
    outside = [k for k, dim in space.items() if not dim.contains(point[k])]
    if outside:
        warnings.warn(
            f"The preset's values of {outside} lie outside the search ranges; the preset's own "
            "setting is not evaluated first.",
            stacklevel=2,
        )
        return None
    return point


__all__ = [
    "DEFAULT_SEARCH",
    "FIXED_KEYS",
    "FIXED_SECTIONS",
    "Dimension",
    "SearchSpaceError",
    "build_search_space",
    "parse_dimension",
    "preset_point",
]
