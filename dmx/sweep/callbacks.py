"""Driver-side Tune callback: each trial's MLflow run is ended when Tune is done with it, and a
trial stopped early by ASHA gets its per-sample report from its last checkpoint."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from dmx import tracking
from dmx.reporting import CLEAN_PROBS_FILE
from dmx.samples import sample_report_from_checkpoint


@ray.remote(max_retries=1)
def _stopped_trial_report(
    checkpoint: tune.Checkpoint,
    tracking_uri: str,
    experiment_id: str,
    trial_id: str,
    threads: int,
) -> bool:
    """`clean_probs.parquet` of a trial stopped early, from its last checkpoint, into its MLflow run
    (the trial's own process ends at a report and never writes it)."""
    torch.set_num_threads(max(1, threads))
    source = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as tmp:
        out = sample_report_from_checkpoint(Path(folder), Path(tmp) / CLEAN_PROBS_FILE)
        return tracking.log_trial_artifact(
            tracking_uri,
            experiment_id,
            trial_id,
            out,
            tags={"dmx.clean_probs_from": f"last checkpoint ({source})"},
        )


class MlflowStatusCallback(tune.Callback):
    """Driver side: end a trial's MLflow run when Tune is done with it. A trial stopped early by
    ASHA never reaches the end of its function, so its run is closed here (FINISHED, tagged
    `dmx.stopped_early`) and its per-sample report is computed from its last checkpoint by a Ray
    task with the trial's resources (waited for when the sweep ends); a trial out of retries is
    marked FAILED with the reason."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        epochs: int,
        cpus_per_trial: float = 1,
        gpus_per_trial: float = 0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.epochs = epochs
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self._reports: dict[str, Any] = {}  # trial id -> ObjectRef of its report task

    def __getstate__(self) -> dict[str, Any]:  # Tune saves callbacks with the experiment
        return {**self.__dict__, "_reports": {}}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        done = int(last.get("epoch", -1)) + 1
        tracking.end_trial_run(
            self.tracking_uri,
            self.experiment_id,
            trial.trial_id,
            "FINISHED",
            tags={tracking.STOPPED_TAG: str(done < self.epochs).lower(), "dmx.epochs_done": done},
        )
        checkpoint = getattr(trial, "checkpoint", None)
        if done < self.epochs and checkpoint is not None:
            self._reports[trial.trial_id] = _stopped_trial_report.options(
                num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial
            ).remote(
                checkpoint,
                self.tracking_uri,
                self.experiment_id,
                trial.trial_id,
                int(self.cpus_per_trial),
            )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Wait for the per-sample reports of stopped trials; a failed one is a warning (the
        trial's checkpoint still gives it: `dmx label-issues TRIAL/checkpoint_N`)."""
        for trial_id, ref in self._reports.items():
            try:
                ray.get(ref, timeout=3600)
            except Exception as exc:  # noqa: BLE001 - the sweep's results stand without it
                warnings.warn(
                    f"Trial {trial_id} was stopped early and its clean_probs.parquet could not be "
                    f"computed from its last checkpoint ({type(exc).__name__}: {exc}). Run "
                    "`dmx label-issues` on that trial's checkpoint_* folder instead.",
                    stacklevel=2,
                )
        self._reports.clear()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = "trial failed"
        error_file = getattr(trial, "error_file", None)
        if error_file and Path(error_file).is_file():
            lines = Path(error_file).read_text(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else reason
        tracking.end_trial_run(
            self.tracking_uri, self.experiment_id, trial.trial_id, "FAILED", reason=reason
        )


__all__ = ["MlflowStatusCallback"]
