"""Clothing1M (paper Table 3): the reference's recipe, searched where lambda_u plays no part.

Preset clothing1m: ImageNet-pretrained ResNet-50, 81 epochs (lr 0.002, /10 from epoch 40), batch
32, a class-balanced subset of 1000 x 32 images per epoch and net, the labelled-only MixMatch
(lambda_u 0: no unlabelled loss), best clean-validation checkpoints per net. With lambda_u out of
play the search covers T in [0.2, 1.0], p_threshold in [0.3, 0.9], alpha in [0.1, 8] (log) and
the learning rate in [5e-4, 1e-2] (log), the paper's values first. The objective is the accuracy
on a held-out 5% of the NOISY training labels (as every dmx sweep); the clean validation split
picks each trial's best checkpoints and is logged beside it (clean_val_acc).

    python sweeps/clothing1m.py --data-dir /data/clothing1m --num-samples 16 --gpus-per-trial 1
    python sweeps/clothing1m.py --smoke-test --data-dir /data/clothing1m      # a CPU check
    python sweeps/clothing1m.py --resume --name NAME

The data layout and where it comes from: docs/datasets.md. See docs/sweeps.md.
"""

from dmx.cli.sweep import main

PRESET = "clothing1m"
SEARCH = (
    "dividemix.T=0.2:1.0",
    "dividemix.p_threshold=0.3:0.9",
    "dividemix.alpha=0.1:8:log",
    "optim.lr=0.0005:0.01:log",
)

if __name__ == "__main__":
    raise SystemExit(main(PRESET, description=__doc__, search=SEARCH))
