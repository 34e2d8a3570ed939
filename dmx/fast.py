"""`run.fast`: one switch for what this hardware supports to train faster.

Fast mode changes the numerics (another memory layout, compiled kernels, perhaps bf16), so it is
a named deviation, off by default; within the mode a resume on the same CPU stays bit-identical.
What it turns on is decided here from the device and the CPU's flags, and the decision is printed
and logged with the run (`FastPlan.describe`):
- channels_last for both nets and every input (oneDNN and cuDNN convolutions prefer NHWC), when
  the images have more than one channel (for one channel NHWC is NCHW);
- `torch.compile` of both nets on CUDA (in place, `nn.Module.compile`: parameter names and
  checkpoints stay those of the eager nets), with a dynamic batch dimension so that the short last
  batch of an epoch or another batch size does not recompile, and dynamo's recompile limit raised
  to hold every graph the loop runs (grad / no-grad / inference mode x train / eval mode x batch
  size ranges: more than its default 8, past which it would silently run the rest eagerly). Not on
  a CPU, where resume must stay bit-exact: Inductor's CPU kernels follow the sizes each graph
  meets first, which differ between a run and its resume (its first training step is a DivideMix
  batch, not a warmup one), and a compiled run resumed in our test diverged from the
  uninterrupted one. The price, measured on this project's AVX2 machine (benchmarks/README.md):
  a PreAct ResNet-18 DivideMix epoch takes 147.6 s with channels_last, 127.6 s compiled as well,
  176.1 s exact;
- bf16 autocast only where bf16 is native: CUDA, or a CPU whose flags include avx512_bf16 or
  amx_bf16. On an AVX2-only CPU bf16 is emulated and 5-12x slower (benchmarks/README.md);
- cudnn.benchmark on CUDA (the fastest convolution algorithms, chosen per shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dmx.config import Config

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


@dataclass(frozen=True)
class FastPlan:
    """What fast mode turns on for one device."""

    channels_last: bool = False
    compile: bool = False
    bf16: bool = False
    cudnn_benchmark: bool = False
    why_not_bf16: str = ""

    def describe(self) -> str:
        on = [
            name
            for name, flag in (
                ("channels_last", self.channels_last),
                ("torch.compile", self.compile),
                ("bf16 autocast", self.bf16),
                ("cudnn.benchmark", self.cudnn_benchmark),
            )
            if flag
        ]
        text = ", ".join(on) or "nothing"
        return text + (f" (fp32: {self.why_not_bf16})" if self.why_not_bf16 else "")


def plan_for(device: torch.device, *, flags: set[str] | None = None) -> FastPlan:
    """The fast-mode plan of `device`; `flags` (the CPU's) default to /proc/cpuinfo's."""
    if device.type == "cuda":
        return FastPlan(channels_last=True, compile=True, bf16=True, cudnn_benchmark=True)
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        native = [f for f in NATIVE_BF16_FLAGS if f in flags]
        why = "" if native else "this CPU has no avx512_bf16 / amx_bf16: bf16 would be emulated"
        return FastPlan(channels_last=True, bf16=bool(native), why_not_bf16=why)
    return FastPlan(channels_last=True, why_not_bf16=f"not tried on {device.type}")


def run_config(cfg: Config, plan: FastPlan | None, *, channels: int = 3) -> Config:
    """The config the loop runs with: `cfg` itself, or in fast mode with channels_last (images of
    more than one `channels`) and, where native, bf16 turned on. Checkpoints record `cfg` as asked
    (run.fast=true)."""
    if plan is None:
        return cfg
    overrides = {
        "run.channels_last": (plan.channels_last and channels > 1) or cfg.run.channels_last
    }
    if plan.bf16:
        overrides["run.precision"] = "bf16"
    return cfg.with_overrides(overrides)


RECOMPILE_LIMIT = 64  # graphs per net the loop may need (module docstring); dynamo's default: 8


def compile_nets(nets: list[nn.Module], plan: FastPlan | None) -> None:
    """Compile each net in place (fast mode with compile on); a no-op otherwise."""
    if plan is None or not plan.compile:
        return
    import torch._dynamo.config as dynamo_config  # the documented knob (torch.compiler FAQ)

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    for net in nets:
        net.compile(dynamic=True)


__all__ = [
    "FastPlan",
    "NATIVE_BF16_FLAGS",
    "RECOMPILE_LIMIT",
    "compile_nets",
    "cpu_flags",
    "plan_for",
    "run_config",
]
