"""DivideMix on CIFAR-10 with symmetric label noise (default 50%; the paper's lambda_u 25).

The same search and flags as the flagship (sweeps/cifar_asym.py); pick another noise rate with
`--preset cifar10-sym-0.2|0.5|0.8|0.9`.

    python sweeps/cifar_sym.py --smoke-test --data-dir /tmp/cifar10
    python sweeps/cifar_sym.py --preset cifar10-sym-0.8 --num-samples 24 --gpus-per-trial 0.5

See docs/sweeps.md.
"""

from dmx.cli.sweep import main

PRESET = "cifar10-sym-0.5"

if __name__ == "__main__":
    raise SystemExit(main(PRESET, description=__doc__))
