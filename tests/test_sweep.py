"""dmx.sweep: the search-space parser, options, spec, command line, checks before anything starts,
checkpoint recovery (fast, mostly without Ray). The real local sweep is tests/test_sweep_e2e.py."""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import time
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray import tune

from dmx import sweep as dmx_sweep
from dmx import tracking
from dmx.cli import main as dmx_main
from dmx.presets import get_preset
from dmx.state import CheckpointError

BASE = get_preset("cifar10-asym-0.4")


# ---- search space ---------------------------------------------------------------------------
def test_default_space_is_the_paper_ranges():
    space = dmx_sweep.build_search_space(BASE)
    assert {k: (d.low, d.high) for k, d in space.items()} == {
        "dividemix.lambda_u": (0.0, 150.0),
        "dividemix.T": (0.2, 1.0),
        "dividemix.p_threshold": (0.3, 0.9),
    }
    # The preset's own setting is evaluated first.
    assert dmx_sweep.preset_point(BASE, space) == {
        "dividemix.lambda_u": 0.0,
        "dividemix.T": 0.5,
        "dividemix.p_threshold": 0.5,
    }


def test_extra_dimensions_and_overrides():
    space = dmx_sweep.build_search_space(
        BASE,
        [
            "dividemix.alpha=0.5:8:log",
            "optim.batch_size=32,64",
            "dividemix.lambda_u=0:50",
            "dividemix.rampup_length=4:32",
            "dividemix.loss_history_window=1:5",
        ],
    )
    assert space["dividemix.alpha"].log and space["dividemix.alpha"].low == 0.5
    assert space["optim.batch_size"].choices == (32, 64)
    assert space["dividemix.lambda_u"].high == 50.0  # a later spec replaces the default
    window = space["dividemix.loss_history_window"]
    assert window.integer and type(window.distribution()).__name__ == "IntDistribution"
    only = dmx_sweep.build_search_space(BASE, ["dividemix.T=0.3:0.7"], defaults=False)
    assert list(only) == ["dividemix.T"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dividemix.T=1.0:0.2", "inverted"),
        ("dividemix.T=0.5:0.5", "inverted"),
        ("dividemix.alpha=0:8:log", "LOW > 0"),
        ("dividemix.lamda_u=0:1", "Did you mean dividemix.lambda_u"),
        ("dividemix.T", "expected KEY=LOW:HIGH"),
        ("dividemix.T=0.2:1.0:cubic", "expected KEY=LOW:HIGH"),
        ("dividemix.p_threshold=0.3:1.5", "must be in"),
        ("dividemix.loss_history_window=1.5:3", "integers"),
        ("optim.batch_size=64,64", "two different"),
        ("dividemix.T=0.1:inf", "must be finite numbers"),  # issue 11.7: not "inverted"
        ("dividemix.lambda_u=nan:1", "must be finite numbers"),
        # issue 11.4: fixed per sweep (one label file, one split made on the driver)
        ("noise.rate=0.2:0.8", "noise.* settings are fixed for a whole sweep"),
        ("noise.mode=sym,asym", "--set noise.mode=VALUE"),
        ("data.split_seed=0:9", "data.* settings are fixed for a whole sweep"),
    ],
)
def test_bad_dimensions_are_clear_errors(spec, message):
    with pytest.raises(dmx_sweep.SearchSpaceError, match=message):
        dmx_sweep.build_search_space(BASE, [spec])


def test_preset_outside_the_ranges_is_not_forced_in():
    space = dmx_sweep.build_search_space(BASE, ["dividemix.lambda_u=10:50"])
    with pytest.warns(UserWarning, match="outside the search ranges"):
        assert dmx_sweep.preset_point(BASE, space) is None


def test_asha_clock_starts_after_warmup():
    assert [dmx_sweep.dm_epoch(e, 2) for e in range(5)] == [0, 0, 1, 2, 3]
    assert [dmx_sweep.dm_epoch(e, 0) for e in range(2)] == [1, 2]


def test_the_search_space_reaches_optuna_unchanged_and_shows_in_rays_live_table():
    """The searched dimensions go to Tune as its param_space (Ray's live table lists the
    searched params from it) and OptunaSearch turns them back into the same distributions."""
    from ray.tune.search.optuna import OptunaSearch

    from dmx.sweep.trial import LIVE_TABLE_METRICS
    from dmx.sweep.tuner import tune_domain

    space = dmx_sweep.build_search_space(
        BASE, ("optim.batch_size=32,64,128", "dividemix.alpha=0.5:8:log", "run.seed=0:4")
    )
    param_space = {key: tune_domain(dim) for key, dim in space.items()}
    converted = OptunaSearch.convert_search_space(param_space)
    assert converted == {key: dim.distribution() for key, dim in space.items()}
    assert list(param_space) == list(space)  # the table's parameter columns, in order
    assert LIVE_TABLE_METRICS[0] == dmx_sweep.METRIC  # the objective is the first metric shown


def test_the_parent_runs_params_define_the_sweep():
    from dmx.sweep.record import sweep_definition

    base = BASE.with_overrides({"data.val_fraction": 0.05}).resolved()
    options = dmx_sweep.SweepOptions(name="d", search=("dividemix.alpha=0.5:8:log",), seed=3)
    spec = dmx_sweep.SweepSpec(options=options, base_config=base.to_flat())
    definition = sweep_definition(spec)
    assert definition["sweep.search.dividemix.alpha"] == "0.5:8:log"
    assert (
        definition["sweep.preset"] == "cifar10-asym-0.4" and definition["sweep.num_samples"] == 20
    )
    assert (
        "seed 3" in definition["sweep.searcher"]
        and "grace period 16" in definition["sweep.scheduler"]
    )
    assert not any(k.startswith(("dividemix.", "run.", "optim.")) for k in definition)


def test_best_trial_skips_failed_and_non_finite_trials():
    from types import SimpleNamespace as R

    results = [
        R(error=RuntimeError("NaN at epoch 1"), metrics={"val_acc": 90.0}),  # failed after epoch 0
        R(error=None, metrics={"val_acc": float("nan")}),
        R(error=None, metrics={"val_acc": 40.0, "trial_id": "a"}),
        R(error=None, metrics={"val_acc": 55.0, "trial_id": "b"}),
        R(error=None, metrics={}),  # never reported
    ]
    assert dmx_sweep.best_result(results).metrics["trial_id"] == "b"
    assert dmx_sweep.best_result(results[:2]) is None


# ---- a real sweep -----------------------------------------------------------------------------
def tiny_config(root: Path):
    """cifar10-asym-0.4 at test scale: small CNN, 3 epochs of which 1 warmup, tiny batches."""
    return BASE.with_overrides(
        {
            "data.root": str(root),
            "noise.cache_dir": str(root / "noise"),
            "model.name": "small_cnn",
            "run.epochs": 3,
            "dividemix.warmup_epochs": 1,
            "optim.batch_size": 32,
            "optim.warmup_batch_size": 64,
            "run.device": "cpu",
            "data.val_fraction": 0.05,  # the sweep's objective (dmx train's default is 0)
        }
    )


# ---- the sweep command line -------------------------------------------------------------------
def test_sweep_cli_builds_the_base_config(tmp_path):
    from dmx.cli import sweep as sweep_cli

    parser = argparse.ArgumentParser()
    sweep_cli.add_arguments(parser, preset="cifar10-asym-0.4")
    args = parser.parse_args(
        [
            "--smoke-test",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "5",
            "--set",
            "dividemix.alpha=2",
            "--seed",
            "3",
        ]
    )
    cfg = sweep_cli.base_config(args)
    assert cfg.preset == "cifar10-asym-0.4" and cfg.noise.mode == "asym"
    assert cfg.model.name == "small_cnn" and cfg.data.subset == 2000  # smoke test
    assert cfg.run.epochs == 5 and cfg.dividemix.alpha == 2.0 and cfg.run.seed == 3  # flags win
    assert cfg.data.root == str(tmp_path.resolve()) and not cfg.data.download


def test_sweep_cli_reports_bad_input_before_starting(tmp_path, capsys):
    from dmx.cli import sweep as sweep_cli

    common = ["--data-dir", str(tmp_path), "--storage-path", str(tmp_path / "r"), "--no-mlflow"]
    assert sweep_cli.main("cifar10-asym-0.4", ["--search", "dividemix.T=1:0.2", *common]) == 2
    assert "inverted" in capsys.readouterr().err
    assert sweep_cli.main("cifar10-asym-0.4", ["--resume", *common]) == 2
    assert "--resume needs --name" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---- SweepOptions, the spec file ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_samples": 0}, "num_samples=0: run at least one trial"),
        ({"max_concurrent": 0}, "max_concurrent=0: must be >= 1"),
        ({"cpus_per_trial": 0}, "need cpus > 0"),
        ({"gpus_per_trial": -1}, "need cpus > 0 and gpus >= 0"),
        ({"cpus_per_trial": float("nan")}, "need cpus > 0"),
        ({"grace_period": 0}, "grace_period=0: must be >= 1 DivideMix epoch"),
        ({"max_failures": -2}, "max_failures=-2"),
        ({"name": "a/b"}, "one folder name"),
        ({"name": ""}, "one folder name"),
    ],
)
def test_sweep_options_are_checked_when_made(changes, message):
    with pytest.raises(dmx_sweep.SweepError, match=message):
        dmx_sweep.SweepOptions(**{"name": "ok", **changes})


def test_sweep_options_store_an_absolute_path_and_the_spec_round_trips(tmp_path, monkeypatch):
    from dmx.sweep.spec import SweepSpec, read_spec, write_spec

    monkeypatch.chdir(tmp_path)
    opts = dmx_sweep.SweepOptions(name="s", storage_path="res", search=["dividemix.T=0.2:1.0"])
    assert opts.storage_path == str(tmp_path / "res") and opts.path == str(tmp_path / "res" / "s")
    assert opts.search == ("dividemix.T=0.2:1.0",) and opts.grace_period == 16
    assert dmx_sweep.SweepOptions(name="u", storage_path="s3://b/x/").path == "s3://b/x/u"
    spec = SweepSpec(options=opts, base_config={"run.epochs": 3}, tracking_uri="sqlite:///m.db")
    write_spec(spec)
    assert read_spec(opts.path) == spec
    # The file keeps its flat format; a file written before `default_search` was stored (its
    # `search` lists every dimension) reads with default_search=False.
    flat = json.loads((tmp_path / "res" / "s" / "dmx_sweep.json").read_text())
    assert flat["num_samples"] == 20 and flat["name"] == "s" and "options" not in flat
    del flat["default_search"]
    (tmp_path / "res" / "s" / "dmx_sweep.json").write_text(json.dumps(flat))
    assert read_spec(opts.path).options.default_search is False
    (tmp_path / "res" / "s" / "dmx_sweep.json").write_text('{"name": "s", "trunc')
    with pytest.raises(dmx_sweep.SweepError, match="not a readable dmx sweep spec"):
        read_spec(opts.path)


# ---- refused before Ray starts or anything is made ----------------------------------------------
def _nothing_made(tmp_path: Path) -> None:
    import ray

    assert not ray.is_initialized(), "Ray was started for a sweep that could not run"
    results = tmp_path / "results"
    assert not results.exists(), list(results.iterdir())
    db = tmp_path / "mlflow.db"
    if db.exists():  # the store may have been checked, but holds no run
        client = MlflowClient(f"sqlite:///{db}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(tmp_path / "data"),
        "--storage-path",
        str(tmp_path / "results"),
        "--name",
        "s",
        "--mlflow-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        *extra,
    ]


def test_sweep_without_a_validation_split_is_refused_before_anything(tmp_path, capsys):
    from dmx.cli import sweep as sweep_cli

    # issue 10.1: dmx train holds out nothing by default; a sweep needs val_acc.
    assert get_preset("cifar10-asym-0.4").data.val_fraction == 0.0
    args = _cli(tmp_path, "--set", "data.val_fraction=0")
    assert sweep_cli.main("cifar10-asym-0.4", args) == 2
    err = capsys.readouterr().err
    assert "data.val_fraction=0" in err and "--set data.val_fraction=0.05" in err, err
    assert len(err.strip().splitlines()) == 1
    _nothing_made(tmp_path)
    with pytest.raises(dmx_sweep.SweepError, match="data.val_fraction"):
        dmx_sweep.run_sweep(BASE, dmx_sweep.SweepOptions("s", tmp_path / "results"), track=False)
    with pytest.raises(dmx_sweep.SweepError, match="holds out no sample"):
        dmx_sweep.run_sweep(
            BASE.with_overrides({"data.val_fraction": 0.001, "data.subset": 100}),
            dmx_sweep.SweepOptions("s", tmp_path / "results"),
            track=False,
        )
    _nothing_made(tmp_path)


def test_sweep_entry_points_hold_out_5_percent_unless_told(tmp_path):
    from dmx.cli import sweep as sweep_cli

    parser = argparse.ArgumentParser()
    sweep_cli.add_arguments(parser, preset="cifar10-sym-0.5")
    assert sweep_cli.base_config(parser.parse_args([])).data.val_fraction == 0.05
    told = parser.parse_args(["--set", "data.val_fraction=0.1"])
    assert sweep_cli.base_config(told).data.val_fraction == 0.1


def test_the_driver_reads_derived_settings_resolved(tmp_path):
    # warmup_epochs is "auto" (10 on CIFAR-10): ASHA's clock needs the number, before Ray starts.
    cfg = BASE.with_overrides({"dividemix.warmup_epochs": "auto", "run.epochs": 8})
    cfg = cfg.with_overrides({"data.val_fraction": 0.05})
    with pytest.raises(dmx_sweep.SweepError, match="run.epochs=8 <= dividemix.warmup_epochs=10"):
        dmx_sweep.run_sweep(cfg, dmx_sweep.SweepOptions("s", tmp_path / "results"), track=False)
    # "auto" fields are searched at their derived type (an int range, not a list of choices).
    space = dmx_sweep.build_search_space(cfg, ["dividemix.warmup_epochs=5:15"], defaults=False)
    assert space["dividemix.warmup_epochs"].integer
    _nothing_made(tmp_path)


def test_searching_a_setting_fixed_per_sweep_is_refused_at_the_command_line(tmp_path, capsys):
    from dmx.cli import sweep as sweep_cli

    code = sweep_cli.main("cifar10-asym-0.4", _cli(tmp_path, "--search", "noise.rate=0.2:0.6"))
    err = capsys.readouterr().err
    assert code == 2 and "noise.rate" in err and "fixed for a whole sweep" in err, err
    _nothing_made(tmp_path)


def test_storage_path_that_is_a_file_is_refused_before_ray_and_mlflow(tmp_path, capsys):
    from dmx.cli import sweep as sweep_cli

    (tmp_path / "results").write_text("a file")
    code = sweep_cli.main("cifar10-asym-0.4", _cli(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and "--storage-path" in err, err
    assert (tmp_path / "results").read_text() == "a file"
    (tmp_path / "results").unlink()
    _nothing_made(tmp_path)  # no Ray, no (RUNNING) parent run


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--cpus-per-trial", "3"],
            "--cpus-per-trial 3, but the largest node of this Ray cluster has 2 CPUs",
        ),
        (
            ["--gpus-per-trial", "1", "--no-mlflow"],
            "--gpus-per-trial 1, but every node of this Ray cluster has no GPU",
        ),
    ],
)
def test_a_trial_request_no_node_can_hold_is_refused(tmp_path, capsys, monkeypatch, flags, message):
    import ray

    from dmx.cli import sweep as sweep_cli
    from dmx.sweep import checks

    # A 2-CPU machine without a GPU (and a dead 8-CPU node that must not count).
    monkeypatch.setattr(checks, "init_ray", lambda address: False)
    nodes = [
        {"Alive": True, "Resources": {"CPU": 2.0}},
        {"Alive": False, "Resources": {"CPU": 8.0}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    code = sweep_cli.main("cifar10-asym-0.4", _cli(tmp_path, *flags))
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("dmx sweep: error:")]
    assert code == 2 and message in line and "no trial could ever start" in line, err
    _nothing_made(tmp_path)


def test_no_best_trial_points_at_errors_only_when_there_were_errors():
    from dmx.cli.sweep import print_result

    base = dict(path="p", tracking_uri="", experiment="e", best_trial_id="", best_params={})
    base.update(best_metrics={}, best_checkpoint="", num_trials=3)
    for errors, interrupted, expected in [
        (2, False, "no trial reported val_acc (2 errored: see the errors above)"),
        (0, True, "no trial reported val_acc before the sweep was interrupted"),
        (0, False, "no trial reported val_acc"),
    ]:
        out = io.StringIO()
        print_result(
            dmx_sweep.SweepResult(**base, num_errors=errors, interrupted=interrupted), out=out
        )
        last = out.getvalue().strip().splitlines()[-1]
        assert last == expected
        assert ("errors above" in last) == (errors > 0)


def test_resume_needs_no_preset_and_a_new_sweep_does(tmp_path, capsys):
    common = ["--storage-path", str(tmp_path / "results"), "--no-mlflow"]
    # Before: "the following arguments are required: --preset", although --resume ignores it.
    assert dmx_main(["sweep", "--resume", "--name", "gone", *common]) == 2
    err = capsys.readouterr().err
    assert "No dmx sweep to resume" in err and "--preset" not in err, err
    assert dmx_main(["sweep", "--name", "new", *common]) == 2
    assert "a new sweep needs --preset" in capsys.readouterr().err
    _nothing_made(tmp_path)


# ---- one driver per sweep ------------------------------------------------------------------------
def _hold_lock(path: str, ready) -> None:
    """A second driver's process (forked: no imports to wait for) holding the sweep's lock."""
    from dmx.sweep.lock import SweepLock

    with SweepLock(path):
        ready.send("held")
        time.sleep(300)


def test_a_second_driver_of_one_sweep_is_refused_until_the_first_dies(tmp_path, capsys):
    import ray

    from dmx.cli import sweep as sweep_cli
    from dmx.sweep.lock import LOCK_FILE, SweepLock

    folder = tmp_path / "results" / "s"
    ready, child_end = multiprocessing.Pipe()
    holder = multiprocessing.get_context("fork").Process(
        target=_hold_lock, args=(str(folder), child_end), daemon=True
    )
    holder.start()
    try:
        assert ready.poll(60) and ready.recv() == "held"
        # A second driver: a new sweep of that name, and a resume of it, both refused at once
        # (before Ray starts), naming the holder.
        for extra in ([], ["--resume"]):
            code = sweep_cli.main("cifar10-asym-0.4", _cli(tmp_path, "--no-mlflow", *extra))
            err = capsys.readouterr().err
            if extra:  # nothing to resume yet: that check comes first
                assert code == 2 and "No dmx sweep to resume" in err, err
                continue
            assert code == 2 and "Another driver is running the sweep" in err, err
            assert f"pid {holder.pid}" in err and "--resume" in err, err
        assert not ray.is_initialized()
        from dmx.sweep.spec import SweepSpec, write_spec

        options = dmx_sweep.SweepOptions("s", tmp_path / "results")
        write_spec(SweepSpec(options=options, base_config={}))  # now there is a sweep to resume
        with pytest.raises(dmx_sweep.SweepError, match=f"pid {holder.pid}"):
            dmx_sweep.resume_sweep(folder)
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs; the kernel drops the lock
        holder.join()
    with SweepLock(str(folder)):
        assert (folder / LOCK_FILE).is_file()
    assert not (folder / LOCK_FILE).exists()
    # A lock on a folder that did not exist and stayed empty leaves nothing behind.
    with SweepLock(str(tmp_path / "fresh" / "s")):
        assert (tmp_path / "fresh" / "s" / LOCK_FILE).is_file()
    assert not (tmp_path / "fresh").exists()
    # URIs have no locks: nothing is taken (documented in docs/fault_tolerance.md).
    with SweepLock("s3://bucket/sweeps/s") as lock:
        assert lock.folder is None


# ---- checkpoint folders after a driver resume (issue 11, item 5) -------------------------------
def _folders(trial: Path, layout: dict[str, list[int]]) -> None:
    """checkpoint_* folders holding TrainStates of the given epochs (ckpt-EPOCH.pt)."""
    from dmx.state import TrainState, save_checkpoint

    for folder, epochs in layout.items():
        for epoch in epochs:
            save_checkpoint(TrainState(config={}, epoch=epoch), trial / folder, keep=10)


def test_recovery_orders_checkpoints_by_the_epoch_inside_not_the_folder_name(tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from dmx.state import checkpoint_epoch, checkpoint_path
    from dmx.sweep import recovery

    # The recovery reads the epoch from the file name dmx.state writes.
    assert checkpoint_epoch(checkpoint_path(tmp_path, 7).name) == 7
    # What Tune leaves after a driver resume: it restored the trial from checkpoint_000000 (its
    # stale experiment state), resumed it from checkpoint_000002 (epoch 3, the newest), and its
    # folder counter, restarted at 1, wrote epoch 4 into the existing checkpoint_000001.
    trial = tmp_path / "trial_x"
    _folders(
        trial, {"checkpoint_000000": [1], "checkpoint_000001": [2, 4], "checkpoint_000002": [3]}
    )
    latest = tune.Checkpoint(str(trial / "checkpoint_000001"))  # Tune's latest: epoch 4

    # A worker killed now: Tune restores from its latest. Folder-name order called 000002 "newer"
    # and went back one epoch (to 3) with a false warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert recovery.newest_checkpoint(latest) is latest
        assert recovery.restore_state(latest).epoch == 4

    # Tune knows no checkpoint (driver killed before its first state save): the newest epoch.
    fs = pafs.LocalFileSystem()
    monkeypatch.setattr(recovery, "trial_storage", lambda: (fs, str(trial)))
    with pytest.warns(UserWarning, match=r"checkpoint_000001 \(epoch 4\)"):
        assert recovery.newest_checkpoint(None).path == str(trial / "checkpoint_000001")
    # Tune restores from an older folder: the newest epoch wins, whatever the folder names.
    with pytest.warns(UserWarning, match=r"from .*checkpoint_000002 \(epoch 3\), but its newer"):
        newer = recovery.newest_checkpoint(tune.Checkpoint(str(trial / "checkpoint_000002")))
    assert newer.path == str(trial / "checkpoint_000001")

    # The newest file damaged: fall back ONE epoch (3, in another folder), not to the older file
    # beside it (2).
    (trial / "checkpoint_000001" / "ckpt-0004.pt").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match=r"unusable .*sha256 mismatch.* \(epoch 3\)"):
        assert recovery.restore_state(latest).epoch == 3
    # Tune's folder lost its file: every other checkpoint, newest epoch first.
    for f in (trial / "checkpoint_000001").iterdir():
        f.unlink()
    assert recovery.newest_checkpoint(latest) is latest  # left to the fallback
    with pytest.warns(UserWarning, match=r"\(epoch 3\)"):
        assert recovery.restore_state(latest).epoch == 3
    for folder in ("checkpoint_000000", "checkpoint_000002"):
        for f in (trial / folder).iterdir():
            f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="No usable checkpoint for this trial"):
        recovery.restore_state(latest)


def test_recovery_passes_over_a_checkpoint_the_killed_driver_left_half_copied(
    tmp_path, monkeypatch
):
    """A driver SIGKILLed while Tune copied a trial's checkpoint to storage leaves a truncated
    file that Tune never recorded. The trial's recovery resumed from it and failed every retry
    ("No usable checkpoint"); it now passes over it: the newest intact epoch, else scratch."""
    import pyarrow.fs as pafs

    from dmx.sweep import recovery

    trial = tmp_path / "trial_x"
    _folders(trial, {"checkpoint_000000": [1], "checkpoint_000001": [2]})
    torn = trial / "checkpoint_000001" / "ckpt-0002.pt"
    torn.write_bytes(torn.read_bytes()[:100])  # the copy stopped part-way
    fs = pafs.LocalFileSystem()
    monkeypatch.setattr(recovery, "trial_storage", lambda: (fs, str(trial)))
    with pytest.warns(UserWarning, match=r"checkpoint_000001 \(epoch 2\) is incomplete"):
        chosen = recovery.newest_checkpoint(None)
    assert chosen.path == str(trial / "checkpoint_000000")
    assert recovery.restore_state(chosen).epoch == 1
    # Tune restores from epoch 1 itself: the torn epoch 2 is passed over, Tune's choice kept.
    latest = tune.Checkpoint(str(trial / "checkpoint_000000"))
    with pytest.warns(UserWarning, match="incomplete"):
        assert recovery.newest_checkpoint(latest) is latest
    # The only checkpoint is torn (the first report's copy): the trial starts from scratch.
    for f in (trial / "checkpoint_000000").iterdir():
        f.unlink()
    (trial / "checkpoint_000000").rmdir()
    with pytest.warns(UserWarning, match="incomplete"):
        assert recovery.newest_checkpoint(None) is None


# ---- a driver killed after writing its spec, before Tune's first save (issue 11, item 6) --------
def test_a_sweep_folder_without_tune_state_starts_cleanly_or_is_refused(tmp_path):
    from dmx.sweep.spec import SweepSpec, clear_unstarted, has_tune_state, write_spec

    folder = tmp_path / "results" / "s"
    spec = SweepSpec(options=dmx_sweep.SweepOptions("s", tmp_path / "results"), base_config={})
    write_spec(spec)
    (folder / "tuner.pkl").write_bytes(b"Tune's, from the dead driver")
    (folder / "trial_0001" / "params.json").parent.mkdir()
    (folder / "trial_0001" / "params.json").write_text("{}")
    assert not has_tune_state(str(folder))
    clear_unstarted(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["dmx_sweep.json"]
    # With Tune's state, a new sweep of that name is refused (before Ray starts).
    (folder / "experiment_state-2025-01-01_00-00-00.json").write_text("{}")
    assert has_tune_state(str(folder))
    cfg = BASE.with_overrides({"data.val_fraction": 0.05})
    with pytest.raises(dmx_sweep.SweepError, match="already exists .* Resume it"):
        dmx_sweep.run_sweep(cfg, spec.options, track=False)
    # A trial folder with checkpoints but no Tune state is not Tune's doing: refused, kept.
    (folder / "experiment_state-2025-01-01_00-00-00.json").unlink()
    (folder / "trial_0002" / "checkpoint_000000").mkdir(parents=True)
    with pytest.raises(dmx_sweep.SweepError, match="holds checkpoints"):
        clear_unstarted(str(folder))
    assert (folder / "trial_0002" / "checkpoint_000000").is_dir()
    import ray

    assert not ray.is_initialized()


def test_a_sweep_says_where_everything_goes(tmp_path):
    from dmx.cli.sweep import print_result, print_start

    out = io.StringIO()
    print_start("s1", str(tmp_path), f"sqlite:///{tmp_path}/m.db", out=out)
    first = out.getvalue().splitlines()
    assert first[0] == "dmx sweep: starting 's1'" and str(tmp_path / "s1") in first[1]
    assert f"sqlite:///{tmp_path}/m.db" in first[2]
    out = io.StringIO()
    print_start("s1", str(tmp_path), False, out=out)  # --no-mlflow: no store named
    assert "MLflow" not in out.getvalue()

    result = dmx_sweep.SweepResult(
        path=f"{tmp_path}/s1",
        tracking_uri=f"sqlite:///{tmp_path}/m.db",
        experiment="s1",
        num_trials=3,
        num_errors=0,
        best_trial_id="a_00001",
        best_params={"dividemix.T": 0.5},
        best_metrics={"val_acc": 60.0},
        best_checkpoint="c",
        interrupted=False,
        experiment_id="4",
        best_run_id="r1",
        optuna_storage=f"sqlite:///{tmp_path}/s1/optuna.db",
        model_uri="models:/m-1",
    )
    out = io.StringIO()
    print_result(result, out=out)
    text = out.getvalue()
    assert (
        "compare trials at:   http://127.0.0.1:5000/#/experiments/4/runs?"
        "workflowType=machine_learning&viewStateShareKey=dmx-sweep"
    ) in text
    assert f"optuna-dashboard sqlite:///{tmp_path}/s1/optuna.db" in text
    assert "MLflow run: r1" in text and "model:      models:/m-1" in text


# ---- seeds per configuration, grids ---------------------------------------------------------
def _captured_tuner(monkeypatch, spec, base):
    """search_tuner's Tuner arguments, captured (no Ray)."""
    from dmx.sweep import tuner as tuner_module

    captured = {}
    monkeypatch.setattr(tuner_module.tune, "Tuner", lambda fn, **kw: captured.update(kw))
    tuner_module.search_tuner(spec, base, verbose=0)
    return captured


def test_seeds_repeat_each_configuration_and_turn_asha_off(tmp_path, monkeypatch):
    """--seeds 3: Ray Tune's Repeater gives every configuration Optuna proposes three trials
    (num_samples x 3) and reports their mean to Optuna; ASHA, which would compare single seeds,
    is off. One seed: Optuna alone, ASHA on."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    base = BASE.with_overrides({"data.val_fraction": 0.05}).resolved()
    spec_for = lambda seeds: dmx_sweep.SweepSpec(  # noqa: E731
        options=dmx_sweep.SweepOptions(
            name=f"s{seeds}", storage_path=str(tmp_path), num_samples=4, seeds=seeds
        ),
        base_config=base.to_flat(),
    )
    (tmp_path / "s3").mkdir()
    (tmp_path / "s1").mkdir()
    three = _captured_tuner(monkeypatch, spec_for(3), base)["tune_config"]
    assert isinstance(three.search_alg, Repeater) and three.search_alg.repeat == 3
    assert isinstance(three.search_alg.searcher, OptunaSearch)
    assert three.num_samples == 12 and three.scheduler is None
    one = _captured_tuner(monkeypatch, spec_for(1), base)["tune_config"]
    assert isinstance(one.search_alg, OptunaSearch) and one.num_samples == 4
    assert isinstance(one.scheduler, ASHAScheduler)


def test_a_repeated_configurations_seeds_share_one_config_id_and_differ_in_run_seed():
    from dmx.sweep.trial import REPEAT_INDEX, _run_name, trial_config

    base = BASE.with_overrides({"data.val_fraction": 0.05, "run.seed": 7}).to_flat()
    searched = ("dividemix.lambda_u", "dividemix.T")
    point = {"dividemix.lambda_u": 25.0, "dividemix.T": 0.5}
    made = [trial_config({**point, REPEAT_INDEX: i}, base, {}, searched=searched) for i in range(3)]
    assert [cfg.run.seed for cfg, _ in made] == [7, 8, 9]
    assert [tags[tracking.SEED_TAG] for _, tags in made] == ["7", "8", "9"]
    assert len({tags[tracking.CONFIG_TAG] for _, tags in made}) == 1
    assert all(cfg.dividemix.lambda_u == 25.0 for cfg, _ in made)
    other = trial_config(
        {**point, "dividemix.lambda_u": 50.0, REPEAT_INDEX: 0}, base, {}, searched=searched
    )[1]
    assert other[tracking.CONFIG_TAG] != made[0][1][tracking.CONFIG_TAG]
    name = _run_name({**base, **point}, searched, made[1][1])
    assert name.endswith("seed=8") and "λu=25" in name
    single_cfg, single_tags = trial_config(point, base, {}, searched=searched)
    assert single_cfg.run.seed == 7 and single_tags == {}  # one seed: no seed or config tags


def test_a_grid_trial_runs_its_cells_config_and_is_named_by_cell_and_seed():
    from dmx.sweep.trial import _run_name, trial_config

    cells = {
        "cifar10-sym-0.2": get_preset("cifar10-sym-0.2").to_flat(),
        "cifar10-asym-0.4": get_preset("cifar10-asym-0.4").to_flat(),
    }
    cfg, tags = trial_config({tracking.CELL_TAG: "cifar10-sym-0.2", "run.seed": 124}, {}, cells)
    assert (cfg.noise.mode, cfg.noise.rate, cfg.run.seed) == ("sym", 0.2, 124)
    assert tags == {tracking.CELL_TAG: "cifar10-sym-0.2", tracking.SEED_TAG: "124"}
    assert _run_name(cfg.to_flat(), (), tags) == "cifar10-sym-0.2 seed=124"


def test_grid_arguments_that_cannot_work_are_refused(tmp_path):
    from dmx.cli.grid import grid_cells
    from dmx.config import ConfigError

    args = argparse.Namespace(
        table="cifar", cells="cifar10-sym-0.2,cifar10-sym-0.3", smoke_test=False, set=[],
        data_dir=None, download=False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"cifar10-sym-0.3.*not in the cifar table.*choose"):
        grid_cells(args)
    args.cells = " , "
    with pytest.raises(ConfigError, match="nothing"):
        grid_cells(args)
    cells = {"cifar10-sym-0.2": get_preset("cifar10-sym-0.2")}
    options = dmx_sweep.SweepOptions(name="g", storage_path=str(tmp_path), cells=("other",))
    with pytest.raises(dmx_sweep.SweepError, match="must name the grid's cells"):
        dmx_sweep.run_grid(cells, options, track=False)
    assert not (tmp_path / "g").exists()  # refused before anything was written


def test_a_grid_whose_cells_disagree_on_the_base_seed_is_refused():
    from dmx.sweep.tuner import grid_tuner

    cells = {
        "a": get_preset("cifar10-sym-0.2").to_flat(),
        "b": get_preset("cifar10-sym-0.5").with_overrides({"run.seed": 1}).to_flat(),
    }
    spec = dmx_sweep.SweepSpec(
        options=dmx_sweep.SweepOptions(name="g", cells=("a", "b")),
        base_config=cells["a"],
        cell_configs=cells,
    )
    with pytest.raises(dmx_sweep.SweepError, match="run.seed differ"):
        grid_tuner(spec, verbose=0)
