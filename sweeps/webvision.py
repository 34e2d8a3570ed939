"""WebVision 1.0, first 50 classes (paper Table 4): the reference's recipe, searched where
lambda_u plays no part.

Preset webvision-50: Inception-ResNet-v2 from scratch, 81 epochs (lr 0.01, /10 from epoch 40),
batch 32, 299 px crops, one warmup epoch of plain cross-entropy, the labelled-only MixMatch
(lambda_u 0). The search covers T in [0.2, 1.0], p_threshold in [0.3, 0.9], alpha in [0.1, 8]
(log) and the learning rate in [2e-3, 5e-2] (log), the paper's values first; the objective is the
accuracy on a held-out 5% of the noisy training labels. Top-1 and top-5 on the WebVision and
ILSVRC12 validation sets are logged every epoch.

    python sweeps/webvision.py --data-dir /data/webvision --num-samples 16 --gpus-per-trial 1
    python sweeps/webvision.py --resume --name NAME

The data layout and where it comes from: docs/datasets.md. See docs/sweeps.md.
"""

from dmx.cli.sweep import main

PRESET = "webvision-50"
SEARCH = (
    "dividemix.T=0.2:1.0",
    "dividemix.p_threshold=0.3:0.9",
    "dividemix.alpha=0.1:8:log",
    "optim.lr=0.002:0.05:log",
)

if __name__ == "__main__":
    raise SystemExit(main(PRESET, description=__doc__, search=SEARCH))
