"""`dmx` CLI: listing commands, a real train + resume on digits, errors as exit code 2."""

from __future__ import annotations

import json

import pytest

from dmx.cli import main
from dmx.state import load_latest_checkpoint


def test_presets_models_and_config(capsys):
    assert main(["presets", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-asym-0.4" in out and "dividemix.lambda_u = 0.0" in out
    assert "paper: Table 2, row DivideMix" in out
    assert main(["models"]) == 0
    assert "preact_resnet18" in capsys.readouterr().out
    assert main(["config", "--preset", "cifar100-sym-0.9", "--docs"]) == 0
    out = capsys.readouterr().out
    assert "dividemix.p_threshold = 0.6" in out and "# Clean-probability threshold" in out


def test_presets_show_the_papers_numbers_and_notes(capsys):
    from dmx.paper import PAPER_RESULTS
    from dmx.presets import PRESETS

    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    for name in PRESETS:
        paper = PAPER_RESULTS.get(name)
        assert (paper.summary() if paper else "—") in lines[name], name
    assert "best 93.4 / last-10 92.1" in lines["cifar10-asym-0.4"]
    assert "confidence penalty in warmup" in lines["cifar10-asym-0.4"]
    assert "loss averaged over the last 5 epochs" in lines["cifar10-sym-0.9"]
    assert "30 warmup epochs" in lines["cifar100-sym-0.5"]
    assert "not a paper setting" in lines["digits-sym-0.5"]


def test_the_paper_numbers_carry_their_source():
    from dmx.paper import PAPER_RESULTS, paper_result

    assert paper_result("cifar10-sym-0.5").best == 94.6 and paper_result("digits-sym-0.5") is None
    for name, result in PAPER_RESULTS.items():
        assert result.source.startswith("Table "), name
        assert (result.best is not None) == (result.dataset.startswith("cifar")), name
    assert PAPER_RESULTS["webvision-50"].summary() == (
        "top-1 77.32 top-5 91.64 (ILSVRC12 top-1 75.20 top-5 90.84)"
    )
    assert PAPER_RESULTS["clothing1m"].summary() == "top-1 74.76"


def test_version(capsys):
    from dmx import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"dmx {__version__}"


def _all_parsers():
    import argparse

    from dmx.cli import make_parser
    from dmx.cli import sweep as sweep_cli

    script = argparse.ArgumentParser(prog="sweeps/cifar_asym.py")
    sweep_cli.add_arguments(script, preset="cifar10-asym-0.4")
    todo, seen = [make_parser(), script], []
    while todo:
        parser = todo.pop()
        seen.append(parser)
        for action in parser._actions:  # argparse offers no public walk over its actions
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return seen


def test_every_flag_has_help():
    missing = [
        f"{parser.prog} {'/'.join(action.option_strings)}"
        for parser in _all_parsers()
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert missing == []


def test_one_data_dir_rule_for_train_and_sweeps(tmp_path, monkeypatch):
    import argparse
    from pathlib import Path

    from dmx.cli import sweep as sweep_cli
    from dmx.cli import train as train_cli

    monkeypatch.chdir(tmp_path)

    def both(*flags):
        t = argparse.ArgumentParser()
        train_cli.add_arguments(t)
        s = argparse.ArgumentParser()
        sweep_cli.add_arguments(s, preset="cifar10-asym-0.4")
        tcfg = train_cli.build_config(t.parse_args(["--preset", "cifar10-asym-0.4", *flags]))
        scfg = sweep_cli.base_config(s.parse_args(list(flags)))
        return (tcfg.data.root, tcfg.data.download), (scfg.data.root, scfg.data.download)

    default = str(Path("data").resolve())
    assert both() == ((default, False), (default, False))  # ./data, never a silent download
    assert both("--download") == ((default, True), (default, True))
    given = str((tmp_path / "elsewhere").resolve())
    assert both("--data-dir", "elsewhere") == ((given, False), (given, False))


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


@pytest.mark.slow
def test_train_prints_where_it_goes_and_no_mlflow_info_lines(tmp_path):
    """A real `dmx train` process: its first stderr line names the run directory and the MLflow
    store, and MLflow / alembic print no INFO lines between the progress bar's redraws."""
    import os
    import subprocess
    import sys

    db = tmp_path / "mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "dmx.cli",
        "train",
        "--preset",
        "digits-sym-0.5",
        "--out",
        str(tmp_path / "run"),
        "--subset",
        "300",
        "--epochs",
        "1",
        "--set",
        f"noise.cache_dir={tmp_path / 'noise'}",
        "--mlflow-uri",
        f"sqlite:///{db}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DMX_SYSTEM_METRICS": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    first = next(line for line in lines if line.startswith("dmx train:"))
    assert str((tmp_path / "run").resolve()) in first and f"sqlite:///{db}" in first
    assert not [line for line in lines if " INFO " in line or line.startswith("INFO")]
