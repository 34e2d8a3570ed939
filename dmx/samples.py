"""The per-sample report (clean_probs.parquet) of a run that stopped before its last epoch, such
as a sweep trial stopped early by ASHA or an interrupted `dmx train`, from its newest checkpoint."""

from __future__ import annotations

from pathlib import Path

from dmx.config import Config
from dmx.evaluate import sample_table
from dmx.files import write_parquet_atomic
from dmx.prepare import load_train_data, prepare_data, resolve_device
from dmx.reporting import CLEAN_PROBS_FILE
from dmx.state import load_latest_checkpoint
from dmx.train import build_nets, check_resume


def sample_report_from_checkpoint(
    checkpoint_dir: Path, path: Path | None = None, *, device: str | None = None
) -> Path:
    """Write clean_probs.parquet (as `fit`'s reporters do at the end) for the newest checkpoint
    in `checkpoint_dir` (a run's `checkpoints/` or Tune's `checkpoint_*` folder). The checkpoint's
    own config is used (its data folder must exist here); `device` overrides run.device.
    Returns the path written (default: CHECKPOINT_DIR/clean_probs.parquet)."""
    checkpoint_dir = Path(checkpoint_dir)
    state = load_latest_checkpoint(checkpoint_dir)
    if state is None:
        raise FileNotFoundError(f"{checkpoint_dir} holds no dmx checkpoint (ckpt-*.pt).")
    cfg = Config.from_flat(state.config).with_overrides(
        {"data.download": False, **({"run.device": device} if device else {})}
    )
    dev = resolve_device(cfg.run.device)
    prepared = prepare_data(cfg)
    check_resume(cfg, state, prepared.noisy)  # the same noisy labels as the checkpoint's
    nets = build_nets(cfg, prepared, dev, starting_weights=False)  # the checkpoint has them
    nets[0].load_state_dict(state.net1)
    nets[1].load_state_dict(state.net2)
    out = Path(path) if path is not None else checkpoint_dir / CLEAN_PROBS_FILE
    table = sample_table(nets, state, load_train_data(cfg, prepared, dev), prepared, cfg)
    write_parquet_atomic(table, out)
    return out


__all__ = ["sample_report_from_checkpoint"]
