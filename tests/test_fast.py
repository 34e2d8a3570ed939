"""run.fast (dmx/fast.py): what the plan turns on for each device and CPU; a fast run on a CPU
(channels_last here) resumed bit for bit within the mode; and the compiled path (CUDA's; forced
here on the CPU) compiling every graph the loop needs without falling back to eager and without
compiling again in later epochs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dmx import fast
from dmx.presets import get_preset
from dmx.reporting import EpochCallback
from dmx.state import load_latest_checkpoint
from dmx.train import fit
from tests.test_train import _strip, to_dir  # the run-dir reporters and timing-free metrics

AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2"


@pytest.mark.parametrize(
    "flags,bf16",
    [
        (AVX2, False),  # the development machine: bf16 would be emulated, 5-10x slower
        (AVX2 + " avx512f avx512bw avx512_bf16", True),
        (AVX2 + " avx512f amx_bf16 amx_tile", True),
        (AVX2 + " avx512f avx512bw", False),  # AVX-512 without its bf16 extension
    ],
)
def test_the_cpu_plan_turns_bf16_on_only_where_the_flags_say_it_is_native(tmp_path, flags, bf16):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    plan = fast.plan_for(torch.device("cpu"), flags=fast.cpu_flags(cpuinfo))
    assert plan.channels_last and not plan.compile and not plan.cudnn_benchmark
    assert plan.bf16 is bf16
    assert ("fp32: this CPU has no avx512_bf16" in plan.describe()) is not bf16
    cfg = fast.run_config(get_preset("cifar10-sym-0.5"), plan, channels=3)
    assert cfg.run.channels_last and cfg.run.precision == ("bf16" if bf16 else "fp32")
    gray = fast.run_config(get_preset("digits-sym-0.5"), plan, channels=1)
    assert not gray.run.channels_last  # one channel: NHWC is NCHW


def test_the_plan_on_cuda_other_devices_and_without_cpuinfo(tmp_path):
    cuda = fast.plan_for(torch.device("cuda"))
    assert cuda.channels_last and cuda.compile and cuda.bf16 and cuda.cudnn_benchmark
    mps = fast.plan_for(torch.device("mps"))
    assert (
        mps.channels_last
        and not (mps.compile or mps.bf16)
        and "not tried on mps" in mps.why_not_bf16
    )
    assert fast.cpu_flags(tmp_path / "missing") == set()
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert "asimd" in fast.cpu_flags(arm)
    cfg = get_preset("digits-sym-0.5")
    assert fast.run_config(cfg, None) is cfg  # exact mode: the config as asked


def _fast_cfg(tmp_path, epochs: int):
    return get_preset("digits-sym-0.5").with_overrides(
        {
            "run.fast": True,
            "run.epochs": epochs,
            "dividemix.warmup_epochs": 1,
            "data.subset": 200,
            "data.test_subset": 50,
            "optim.batch_size": 16,
            "optim.warmup_batch_size": 32,
            "noise.cache_dir": str(tmp_path / "noise"),
            "run.device": "cpu",
        }
    )


def setup_channels_last(cfg) -> bool:
    from dmx.train import setup

    return setup(cfg).loop.cfg.run.channels_last


@pytest.mark.parametrize("channels", [1, 3])
def test_a_fast_run_resumes_bit_for_bit_within_the_mode(tmp_path, monkeypatch, channels):
    """Cut after epoch 2 of 3 and resumed: the uninterrupted fast run's weights, clean
    probabilities and metrics. With 3 channels (digits made RGB) channels_last is on."""
    if channels == 3:
        from dmx import prepare

        original = prepare.load_run_dataset

        def rgb(cfg):
            ds = original(cfg)
            train = replace(ds.train, images=ds.train.images.expand(-1, 3, -1, -1).contiguous())
            test = replace(ds.test, images=ds.test.images.expand(-1, 3, -1, -1).contiguous())
            return replace(ds, train=train, test=test, mean=ds.mean * 3, std=ds.std * 3, channels=3)

        monkeypatch.setattr(prepare, "load_run_dataset", rgb)
    cfg = _fast_cfg(tmp_path, 3)
    full = fit(cfg, reporter=to_dir(tmp_path / "full", cfg))
    cut = cfg.with_overrides({"run.epochs": 2})
    fit(cut, reporter=to_dir(tmp_path / "cut", cut))
    state = load_latest_checkpoint(tmp_path / "cut" / "checkpoints")
    assert state.epoch == 2 and state.config["run.fast"] is True
    resumed = fit(cfg, state=state, reporter=to_dir(tmp_path / "cut", cfg))
    assert setup_channels_last(cfg) is (channels == 3)  # the layout the runs trained in
    for name in ("net1", "net2"):
        a, b = getattr(full, name), getattr(resumed, name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(full.clean_prob1, resumed.clean_prob1)
    assert _strip(full.metrics_history) == _strip(resumed.metrics_history)


@pytest.mark.slow
def test_the_compiled_path_compiles_every_graph_once_and_never_runs_eager(tmp_path, monkeypatch):
    """CUDA's plan (compile, dynamic batch) forced on the CPU: one warmup and three DivideMix
    epochs (labelled sets, hence last batches, of other sizes each epoch) compile what they need
    by the second DivideMix epoch and nothing after; no graph hits dynamo's recompile limit (past
    it the net would silently run eagerly)."""
    from torch._dynamo.utils import counters  # dynamo's own counters (test-only use)

    monkeypatch.setattr(
        fast, "plan_for", lambda device, flags=None: fast.FastPlan(channels_last=True, compile=True)
    )
    graphs: list[int] = []
    record = EpochCallback(lambda e, m, s: graphs.append(counters["stats"]["unique_graphs"]))
    torch._dynamo.reset()
    counters.clear()
    state = fit(_fast_cfg(tmp_path, 4), reporter=record)
    assert graphs[0] > 0, graphs  # the warmup ran compiled
    assert graphs[2] == graphs[3], graphs  # the last DivideMix epoch compiled nothing new
    assert graphs[3] <= fast.RECOMPILE_LIMIT
    assert not any("recompile_limit" in k or "cache_size" in k for k in counters["frames"]), (
        counters
    )
    assert state.epoch == 4
