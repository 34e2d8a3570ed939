"""A worker node lost mid-trial (its raylet and workers killed without grace, like a preempted
spot instance) in a real multi-node Ray cluster on this machine: Tune retries the trial on another
node from its last checkpoint, and it finishes bit-identical to the uninterrupted run.

`ray.cluster_utils.Cluster`: a head with 0 CPUs (no trial runs there) and two worker nodes of 1 CPU
each; all nodes share one local storage folder (on a real cluster: NFS or s3://).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dmx import sweep as dmx_sweep
from dmx.state import load_latest_checkpoint
from tests.fixtures import write_cifar_fixture
from tests.test_fault_trial_kill import (
    EPOCHS,
    PID_FILE_ENV,
    assert_identical_to_reference,
    attempts,
    current_attempt,
    fault_config,
    finished_sweep,
    restarts,
    results,
    run_in_thread,
    wait_for,
)

# Notice a dead node within seconds (Ray's defaults take ~30 s).
FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


@pytest.fixture()
def cluster(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv(PID_FILE_ENV, str(tmp_path / "pids.jsonl"))
    repo = str(Path(__file__).resolve().parents[1])
    paths = [repo, os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    c = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "_system_config": FAST_FAILURE_DETECTION,
        },
    )
    try:
        for _ in range(2):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, configure_logging=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.slow
def test_trial_survives_the_loss_of_its_node(tmp_path, cluster):
    import ray

    root = write_cifar_fixture(tmp_path / "data", n_train=200, n_test=50)
    pid_file = tmp_path / "pids.jsonl"
    sweep_dir = tmp_path / "results" / "nodeloss"
    start = time.perf_counter()
    thread, out = run_in_thread(
        lambda: dmx_sweep.run_sweep(
            fault_config(root),
            dmx_sweep.SweepOptions(
                name="nodeloss",
                storage_path=tmp_path / "results",
                num_samples=1,
                grace_period=100,
                max_failures=2,
            ),
            mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db",
            verbose=0,
        )
    )
    # After the trial's first checkpoint, take its node away mid-epoch.
    wait_for(
        lambda: len(results(sweep_dir)) >= 1,
        timeout=300,
        what="the first checkpoint",
        alive=thread.is_alive,
    )
    time.sleep(0.5)
    lost_after = int(results(sweep_dir)[-1]["epoch"])
    lost_node = attempts(pid_file)[-1]["node"]
    (victim,) = [n for n in cluster.worker_nodes if n.node_id == lost_node]
    cluster.remove_node(victim, allow_graceful=False)
    removed_at = time.perf_counter()
    cluster.add_node(num_cpus=1)  # a fresh replacement node

    finished_sweep(thread, out)

    runs = attempts(pid_file)
    assert len(runs) == 2, runs
    assert runs[0]["node"] == lost_node and runs[1]["node"] != lost_node
    alive_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert lost_node not in alive_nodes and runs[1]["node"] in alive_nodes
    rows = results(sweep_dir)
    started = restarts(rows)
    assert started and started[0] >= lost_after + 1 >= 1, (started, lost_after)
    recovery = next(r for r in rows if r in current_attempt(rows))
    print(
        f"\nnode loss: node lost after epoch {lost_after}, trial resumed at epoch {started[0]} "
        f"on another node, epochs re-run {len(rows) - EPOCHS}, "
        f"{time.perf_counter() - removed_at:.0f} s from node loss to the end of the trial, "
        f"total {time.perf_counter() - start:.0f} s (first restored epoch {recovery['epoch']})"
    )

    trial_dir = next(sweep_dir.glob("trial_*"))
    state = load_latest_checkpoint(sorted(trial_dir.glob("checkpoint_*"))[-1])
    assert_identical_to_reference(sweep_dir, state)
