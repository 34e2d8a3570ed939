"""`dmx` CLI: listing commands, a real train + resume on digits, errors as exit code 2."""

from __future__ import annotations

import json

import pytest

from dmx.cli import main
from dmx.state import load_latest_checkpoint


def test_presets_models_and_config(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-asym-0.4" in out and "dividemix.lambda_u = 0.0" in out
    assert main(["models"]) == 0
    assert "preact_resnet18" in capsys.readouterr().out
    assert main(["config", "--preset", "cifar100-sym-0.9", "--docs"]) == 0
    out = capsys.readouterr().out
    assert "dividemix.p_threshold = 0.6" in out and "# Clean-probability threshold" in out


def _train(tmp_path, *extra):
    return main(
        [
            "train",
            "--preset",
            "digits-sym-0.5",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--subset",
            "400",  # a stratified 400 of the 1397 digits: the same code paths, less training
            "--set",
            "dividemix.warmup_epochs=1",
            "--set",
            f"noise.cache_dir={tmp_path / 'noise'}",
            "--mlflow-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            *extra,
        ]
    )


def test_train_then_resume_then_refuse_overwrite(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "2") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 2 and 0 <= summary["test_acc"] <= 100
    run = tmp_path / "run"
    assert (run / "clean_probs.parquet").exists() and (run / "metrics.jsonl").exists()

    # --resume continues the same run (same config from the checkpoint) to a later epoch.
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--resume",
                "--epochs",
                "3",
                "--quiet",
                "--mlflow-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
            ]
        )
        == 0
    )
    state = load_latest_checkpoint(run / "checkpoints")
    assert state.epoch == 3 and state.config["preset"] == "digits-sym-0.5"
    assert [m["epoch"] for m in state.metrics_history] == [0, 1, 2]
    assert json.loads((run / "config.json").read_text())["run.epochs"] == 3  # the extension

    # One MLflow run, three epochs, no repeated steps.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dmx-train")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "test_acc")]
    assert steps == [0, 1, 2]
    assert runs[0].data.params["run.epochs"] == "2"  # MLflow params are write-once:
    assert runs[0].data.tags["dmx.resumed_with.run.epochs"] == "3"  # the extension is a tag
    assert runs[0].data.tags["dmx.restored_from_epoch"] == "2"
    assert state.mlflow_run_id == runs[0].info.run_id

    # Starting afresh into a folder that holds a run would clobber it: refused.
    assert _train(tmp_path, "--epochs", "2") == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume", "--no-mlflow"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--set", "dividemix.T=-1"], "dividemix.T"),
        (["--set", "dividemix.lamda_u=1"], "dividemix.lambda_u"),
        (["--set", "novalue"], "dotted.key=value"),
        (["--preset", "cifar10-asym-0.5"], "Known presets"),
    ],
)
def test_bad_settings_exit_2_with_the_reason(tmp_path, capsys, args, fragment):
    code = main(["train", "--out", str(tmp_path / "r"), "--no-mlflow", "--quiet", *args])
    assert code == 2
    assert fragment in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "train",
            "--preset",
            "digits-sym-0.5",
            "--model",
            "nonexistent_net",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--no-mlflow",
            "--quiet",
        ]
    )
    assert code == 2
    assert "nonexistent_net" in capsys.readouterr().err
