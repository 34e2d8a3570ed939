"""DivideMix on CIFAR-100 with symmetric label noise (default 50%; the paper's lambda_u 150).

CIFAR-100 warms up for 30 epochs, so ASHA's clock (DivideMix epochs) starts at epoch 30. Other
rates: `--preset cifar100-sym-0.2|0.5|0.8|0.9`.

    python sweeps/cifar100_sym.py --smoke-test --data-dir /data   # needs ROOT/cifar-100-python
    python sweeps/cifar100_sym.py --num-samples 24 --gpus-per-trial 0.5 --max-concurrent 8

See docs/sweeps.md.
"""

from dmx.cli.sweep import main

PRESET = "cifar100-sym-0.5"

if __name__ == "__main__":
    raise SystemExit(main(PRESET, description=__doc__))
