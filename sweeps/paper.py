"""Reproduce the paper: one of its result tables as a grid of presets x seeds, one command.

    python sweeps/paper.py --table cifar --seeds 3 --data-dir /data --gpus-per-trial 1
    python sweeps/paper.py --table cifar --smoke-test --data-dir /data     # minutes on a CPU
    python sweeps/paper.py --resume --name NAME
    python analysis/paper_table.py --experiment NAME     # best / last-10, mean +- std, the paper

See docs/sweeps.md ("The paper's table").
"""

from dmx.cli.grid import main

if __name__ == "__main__":
    raise SystemExit(main())
