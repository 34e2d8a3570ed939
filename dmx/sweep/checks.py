"""What a sweep driver checks before anything is made, and the Ray session it runs in: the Ray
address answers, the cluster can hold one trial's request, the storage folder is writable, and the
config holds out a validation split (the objective)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import ray

from dmx.config import Config
from dmx.sweep.spec import SweepError, SweepOptions


def check_ray_address(address: str, *, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens at a HOST:PORT Ray address
    (ray.init would otherwise retry for minutes). `auto` and `local` are left to Ray."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SweepError(
            f"No Ray cluster answers at --address {address} ({exc}). Start one there (`ray start "
            "--head --port PORT` on the head node), check the host and port (the head prints "
            "them), or drop --address to run on a local Ray instance."
        ) from None


def init_ray(address: str | None) -> bool:
    """Join the cluster at `address`, or start a local Ray; nothing when Ray already runs.
    Returns whether this call started (or joined) Ray, i.e. whether it is ours to shut down."""
    if ray.is_initialized():
        return False
    if address:
        check_ray_address(address)
        try:
            ray.init(address=address)
        except ConnectionError as exc:
            raise SweepError(
                f"Cannot connect to a Ray cluster at --address {address}: {exc} Start one "
                "(`ray start --head`) or drop --address to run on a local Ray instance."
            ) from None
    else:
        # A new local Ray, even when a cluster already runs on this machine (plain ray.init()
        # would join that one: --address auto says so explicitly). Its dashboard (when installed)
        # serves on this machine only; expose it through an SSH tunnel, never by binding 0.0.0.0.
        ray.init(address="local", dashboard_host="127.0.0.1")
    return True


def check_resources(options: SweepOptions) -> None:
    """Refuse a per-trial request that no node of the Ray cluster can hold: Tune would leave every
    trial PENDING for ever (a trial's CPUs and GPUs must fit on one node)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus, gpus = options.cpus_per_trial, options.gpus_per_trial
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    most_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    most_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    if gpus > most_gpus:
        have = "no GPU" if most_gpus == 0 else f"at most {most_gpus:g} GPUs"
        what = f"--gpus-per-trial {gpus:g}, but every node of this Ray cluster has {have}"
    elif cpus > most_cpus:
        what = (
            f"--cpus-per-trial {cpus:g}, but the largest node of this Ray cluster has "
            f"{most_cpus:g} CPUs"
        )
    else:
        what = (
            f"--cpus-per-trial {cpus:g} with --gpus-per-trial {gpus:g}, but no node of this Ray "
            "cluster has both"
        )
    raise SweepError(
        f"{what}: no trial could ever start. Ask for at most what one node has, or add a node "
        "that has it (ray start --address ...)."
    )


@contextlib.contextmanager
def ray_session(address: str | None, options: SweepOptions) -> Iterator[None]:
    """Ray for one driver session, with the cluster checked against the trials' request. A Ray
    this session started is shut down again when the session fails."""
    started = init_ray(address)
    try:
        check_resources(options)
        yield
    except BaseException:
        if started:
            ray.shutdown()
        raise


def check_storage(path: str) -> None:
    """The sweep folder `path` must be (or can become) a writable folder. Checked before Ray starts
    or anything is made; a URI (s3://, gs://) is left to pyarrow."""
    if "://" in path:
        return
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SweepError(
            f"{probe} is a file, not a folder: --storage-path must be a folder (it holds one "
            "folder per sweep). Choose another --storage-path (or --name)."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SweepError(
            f"Cannot write to {probe} (permission denied): choose a --storage-path you can "
            "write to."
        )


def check_validation_split(base: Config) -> None:
    """A sweep selects on val_acc: the config must hold out a validation split."""
    fraction, subset = base.data.val_fraction, base.data.subset
    if fraction <= 0:
        raise SweepError(
            f"data.val_fraction={fraction}: a sweep selects trials on val_acc, the accuracy on a "
            "held-out split of the noisy training labels, and this config holds none out. Set "
            "data.val_fraction > 0, e.g. --set data.val_fraction=0.05 (what `dmx sweep` and the "
            "sweep scripts use unless told otherwise)."
        )
    if subset and round(fraction * subset) < 1:
        raise SweepError(
            f"data.val_fraction={fraction} of data.subset={subset} holds out no sample: raise "
            f"data.val_fraction to at least {1 / subset:.3g} or use a larger data.subset."
        )


__all__ = [
    "check_ray_address",
    "check_resources",
    "check_storage",
    "check_validation_split",
    "init_ray",
    "ray_session",
]
