"""Where a DivideMix epoch's time goes, and how far it is from the machine's compute floor.

For one preset / model / device / precision, on real data (CIFAR-10 rebuilt from the project's
shared copy, else scikit-learn's digits), this times with dmx's own code:
  warmup     one warmup epoch of one net (`dmx.steps.warmup_epoch`)
  division   both nets' divisions: eval pass + GMM + co-divide (`dmx.train.divide_nets`)
  dividemix  one DivideMix epoch per net (`dmx.steps.dividemix_epoch`), optionally capped at
             --max-iters iterations (the labelled set cut to max_iters x batch samples)
  test       the evaluation of both nets on every split (`dmx.evaluate.eval_metrics`)
  checkpoint one save + one load of the full TrainState (`dmx.state`)
and, in the same run, the COMPUTE FLOOR of each phase: exactly the same model passes (shapes,
counts, train/eval and grad modes, optimiser steps) on device-resident random tensors, with no
data handling, no GMM and no bookkeeping. It prints a table: phase, seconds, images/s, share of
the epoch and the ratio to the floor.

A figure taken while other processes used the CPU is not a figure: the script measures the CPU
time every other process on the machine used while it ran (/proc) and prints a warning instead
of a clean result when it exceeds 5% of the machine.

    python benchmarks/epoch.py                                   # small_cnn, CIFAR-10 10k subset
    python benchmarks/epoch.py --model preact_resnet18 --max-iters 20 --subset 5000
    python benchmarks/epoch.py --fast                            # run.fast=true (compile, ...)
    python benchmarks/epoch.py --data digits                     # no CIFAR-10 here
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmx.config import Config
from dmx.evaluate import autocast, eval_batch_size, eval_metrics
from dmx.fast import cpu_flags
from dmx.presets import get_preset
from dmx.state import load_checkpoint, rng_state, save_checkpoint
from dmx.steps import dividemix_epoch, warmup_epoch
from dmx.train import divide_nets, setup

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMING = {"epoch_seconds", "images_per_second"}


# --------------------------------------------------------------------------------------------
# Machine state: was anything else using the CPU?
# --------------------------------------------------------------------------------------------
def _cpu_seconds_of_others(own: set[int]) -> float:
    """CPU seconds (user + system) used so far by every process that is not ours."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _own_pids() -> set[int]:
    """This process and all its descendants (DataLoader and compile workers, a subprocess, Ray's
    raylet and workers)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    pids, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in pids} - pids
        pids |= more
        grew = bool(more)
    return pids


@dataclass
class Machine:
    load_before: float
    load_after: float = 0.0
    other_cpu_share: float = 0.0  # of all cores, while the benchmark ran

    def shared(self) -> bool:
        """Other processes used more than 5% of the CPUs while the benchmark ran (measured from
        /proc, the benchmark's own processes left out; the load average before the start only
        tells that something ran shortly before)."""
        return self.other_cpu_share > 0.05

    def report(self) -> str:
        """The machine-state line printed under every figure, and a warning when it was shared."""
        text = (
            f"# machine: load before {self.load_before:.2f}, after {self.load_after:.2f}; "
            f"other processes used {100 * self.other_cpu_share:.1f}% of the CPUs meanwhile"
        )
        if self.shared():
            text += (
                "\n# WARNING: the machine was shared while this ran: these figures are not fit to "
                "publish. Run again on an idle machine."
            )
        return text


@contextmanager
def watch_machine():
    load = os.getloadavg()[0]
    machine = Machine(load_before=load)
    start_other = _cpu_seconds_of_others(_own_pids())
    start = time.perf_counter()
    yield machine
    wall = time.perf_counter() - start
    other = _cpu_seconds_of_others(_own_pids()) - start_other
    machine.load_after = os.getloadavg()[0]
    machine.other_cpu_share = max(0.0, other) / max(wall * os.cpu_count(), 1e-9)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def cifar10_root() -> Path | None:
    """CIFAR-10 rebuilt once from the project's shared JPEG copy (about 15 s), or None."""
    out = Path(tempfile.gettempdir()) / "dmx-bench-cifar10"
    if (out / "cifar-10-batches-py" / "test_batch").is_file():
        return out
    script = SHARED / "make_cifar10.py"
    if not script.is_file():
        return None
    subprocess.run([sys.executable, str(script), str(out)], check=True)
    return out


def bench_config(args: argparse.Namespace) -> Config:
    if args.data == "digits" or (args.data == "auto" and cifar10_root() is None):
        cfg = get_preset("digits-sym-0.5")
        overrides = {"data.subset": min(args.subset, 1397)} if args.subset else {}
    else:
        cfg = get_preset(args.preset)
        overrides = {"data.root": str(cifar10_root()), "data.subset": args.subset}
    overrides.update(
        {
            "model.name": args.model or cfg.model.name,
            "run.device": args.device,
            "run.precision": args.precision,
            "run.fast": args.fast,
            "noise.cache_dir": str(Path(tempfile.gettempdir()) / "dmx-bench-noise"),
            "data.test_subset": args.test_subset,
        }
    )
    return cfg.with_overrides(overrides)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


@dataclass
class Row:
    phase: str
    seconds: float
    images: int
    floor: float | None = None


def measure(cfg: Config, max_iters: int, repeats: int) -> tuple[list[Row], dict]:
    """Time each phase with dmx's code, then its compute floor, alternately `repeats` times;
    each figure is the fastest of its repeats (the VM's timings wander by 10% and more)."""
    s = setup(cfg)
    loop, data, nets, opts = s.loop, s.data, s.nets, s.opts
    device, run_cfg = data.device, loop.cfg
    info = {"n_train": len(data), "device": str(device), "repeats": repeats}
    bs, wbs = run_cfg.optim.batch_size, run_cfg.optim.warmup_batch_size
    epoch = run_cfg.dividemix.warmup_epochs
    n_eval = sum(len(data.eval_labels(sp)) for sp in data.eval_splits) * 2
    # Untimed first pass of each kind (allocator, oneDNN primitive caches, compiled graphs).
    _warm_up_kernels(s)
    floors = Floor(s)
    real: dict[str, list[float]] = {}
    floor: dict[str, list[float]] = {}
    images: dict[str, int] = {}

    def keep(table, name, seconds, n=None):
        table.setdefault(name, []).append(seconds)
        if n is not None:
            images[name] = n

    for _ in range(repeats):
        t, (_, n) = timed(lambda: warmup_epoch(nets[0], opts[0], loop, epoch=0, net_id=0), device)
        keep(real, "warmup (1 net)", t, n)
        keep(floor, "warmup (1 net)", floors.warmup(len(data), wbs))
        t, divisions = timed(lambda: divide_nets(s, {}), device)
        keep(real, "division (2 nets)", t, 2 * len(data))
        keep(floor, "division (2 nets)", floors.eval_passes(2 * len(data)))
        for k in (0, 1):
            div = _capped(divisions[1 - k], max_iters * bs)
            call = lambda k=k, div=div: dividemix_epoch(  # noqa: E731
                nets[k], nets[1 - k], opts[k], loop, division=div, epoch=epoch, net_id=k
            )
            t, (_, n) = timed(call, device)
            name = f"dividemix net{k + 1}"
            keep(real, name, t, n)
            n_lab = int(div.labeled_mask.sum())
            info[f"labeled_net{k + 1}"] = n_lab
            keep(floor, name, floors.dividemix(n_lab, len(div.indices) - n_lab, bs))
        t, _ = timed(lambda: eval_metrics(nets, data, run_cfg), device)
        keep(real, "test (2 nets)", t, n_eval)
        keep(floor, "test (2 nets)", floors.eval_passes(n_eval))
        with tempfile.TemporaryDirectory() as tmp:
            s.state.net1, s.state.net2 = nets[0].state_dict(), nets[1].state_dict()
            s.state.opt1, s.state.opt2 = opts[0].state_dict(), opts[1].state_dict()
            s.state.rng = rng_state(loop.gen, loop.np_rng)
            t_save, path = timed(lambda: save_checkpoint(s.state, Path(tmp)), device)
            t_load, _ = timed(lambda path=path: load_checkpoint(path), device)
            info["checkpoint_mb"] = path.stat().st_size / 2**20
        keep(real, "checkpoint save+load", t_save + t_load, 0)
    rows = [
        Row(name, min(times), images[name], min(floor[name]) if name in floor else None)
        for name, times in real.items()
    ]
    return rows, info


def _capped(div, max_samples: int):
    """The division with its labelled set cut to `max_samples` (0: all): a capped epoch."""
    if not max_samples or div.labeled_mask.sum() <= max_samples:
        return div
    from dataclasses import replace

    mask = div.labeled_mask.copy()
    keep = np.flatnonzero(mask)[max_samples:]
    mask[keep] = False
    return replace(div, labeled_mask=mask)


def _warm_up_kernels(s) -> None:
    x = torch.randn(8, *_input_shape(s), device=s.data.device)
    if s.loop.cfg.run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for net in s.nets:
        for train in (True, False):
            net.train(train)
            with torch.no_grad(), autocast(s.loop.cfg, s.data.device):
                net(x)
        net.train()
        with autocast(s.loop.cfg, s.data.device):
            net(x).float().sum().backward()
        net.zero_grad(set_to_none=True)


def _input_shape(s) -> tuple[int, ...]:
    return tuple(s.data.probe().shape[1:])


class Floor:
    """The same model passes as dmx's epoch, on random device tensors: nothing else."""

    def __init__(self, s) -> None:
        self.s = s
        self.device = s.data.device
        self.cfg = s.loop.cfg
        self.shape = _input_shape(s)
        self.num_classes = s.data.num_classes
        self._inputs: dict[int, torch.Tensor] = {}
        # Throwaway copies: the floor must not change the nets measured above.
        import copy

        self.nets = [copy.deepcopy(n) for n in s.nets]
        self.opts = [
            torch.optim.SGD(n.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
            for n in self.nets
        ]

    def _x(self, b: int) -> torch.Tensor:
        """A device-resident random batch of `b` inputs (made once per size: the floor does not
        pay for random numbers either)."""
        if b not in self._inputs:
            x = torch.randn(b, *self.shape, device=self.device)
            if self.cfg.run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self._inputs[b] = x
        return self._inputs[b]

    def _step(self, net, opt, b: int) -> None:
        x = self._x(b)
        y = torch.randint(0, self.num_classes, (b,), device=self.device)
        with autocast(self.cfg, self.device):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def warmup(self, n: int, bs: int) -> float:
        net, opt = self.nets[0], self.opts[0]
        net.train()
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        t, _ = timed(lambda: [self._step(net, opt, b) for b in sizes], self.device)
        return t

    def eval_passes(self, n: int) -> float:
        bs = eval_batch_size(self.cfg, self.device)
        net = self.nets[0]
        net.eval()
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])

        def run():
            with torch.inference_mode(), autocast(self.cfg, self.device):
                for b in sizes:
                    net(self._x(b))

        t, _ = timed(run, self.device)
        return t

    def dividemix(self, n_lab: int, n_unl: int, bs: int) -> float:
        """Per iteration: 6 no-grad forwards (net train-mode x4 on u1,u2,x1,x2 ... as the loop:
        net(u1), net(u2), peer(u1), peer(u2), net(x1), net(x2)) and one forward/backward/step on
        the 2B + 2U mixed batch."""
        net, peer = self.nets
        opt = self.opts[0]
        sizes = [bs] * (n_lab // bs) + ([n_lab % bs] if n_lab % bs else [])
        u = min(bs, n_unl)

        def run():
            for b in sizes:
                net.train()
                peer.eval()
                with torch.no_grad(), autocast(self.cfg, self.device):
                    if u:
                        net(self._x(u)), net(self._x(u)), peer(self._x(u)), peer(self._x(u))
                    net(self._x(b)), net(self._x(b))
                self._step(net, opt, 2 * b + 2 * u)

        t, _ = timed(run, self.device)
        return t


# --------------------------------------------------------------------------------------------
def print_table(rows: list[Row], info: dict, machine: Machine, args, cfg: Config) -> None:
    dm = [r for r in rows if r.phase.startswith("dividemix")]
    epoch = sum(r.seconds for r in dm) + rows[1].seconds
    flags = cpu_flags()
    print(
        f"# {platform.processor() or platform.machine()} {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, flags: "
        + " ".join(sorted(f for f in flags if f.startswith(("avx", "amx")))).strip()
    )
    print(
        f"# preset {cfg.preset}, model {cfg.model.name}, N={info['n_train']}, device "
        f"{info['device']}, precision {cfg.run.precision}, fast {cfg.run.fast}, fastest of "
        f"{info['repeats']} repeats, max_iters "
        f"{args.max_iters or 'all'}, labelled net1/net2 {info.get('labeled_net1')}/"
        f"{info.get('labeled_net2')}, checkpoint {info['checkpoint_mb']:.1f} MB"
    )
    print(
        "| phase | seconds | images/s | share of DivideMix epoch | floor s | ratio to floor |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        ips = f"{r.images / r.seconds:.0f}" if r.images and r.seconds else "-"
        share = f"{100 * r.seconds / epoch:.1f}%" if not r.phase.startswith("warmup") else "-"
        floor = f"{r.floor:.2f}" if r.floor else "-"
        ratio = f"{r.seconds / r.floor:.3f}" if r.floor else "-"
        print(f"| {r.phase} | {r.seconds:.2f} | {ips} | {share} | {floor} | {ratio} |")
    dm_floor = sum(r.floor or 0 for r in dm) + (rows[1].floor or 0)
    print(f"| DivideMix epoch (division + both nets) | {epoch:.2f} | - | 100% | {dm_floor:.2f} | "
          f"{epoch / dm_floor:.3f} |")  # fmt: skip
    print(machine.report())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="cifar10-asym-0.4")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--data", choices=("auto", "cifar10", "digits"), default="auto")
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--fast", action="store_true", help="run.fast=true")
    p.add_argument("--max-iters", type=int, default=0, help="cap DivideMix iterations per net")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=3, help="alternate real/floor, keep the fastest")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args)
    with watch_machine() as machine:
        rows, info = measure(cfg, args.max_iters, args.repeats)
    print_table(rows, info, machine, args, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
