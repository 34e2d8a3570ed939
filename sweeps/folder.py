"""A sweep over your own images: an image folder or a label manifest, noisy labels as given.

Preset folder: `data.dataset=folder` (ROOT/<class name>/<image>, the folder name is the label),
an ImageNet-pretrained torchvision ResNet-50 (`torchvision:resnet50`) with a new head, the CIFAR
DivideMix loss. Searches lambda_u, T and p_threshold (as the CIFAR sweeps). Point it at a
manifest instead with `--set data.dataset=manifest --set data.manifest=labels.csv`, at a test
folder with `--set data.test_root=PATH`, at another backbone with `--model torchvision:NAME`.

    python sweeps/folder.py --data-dir /data/my_images --set data.test_root=/data/my_test
    python sweeps/folder.py --data-dir /data --set data.dataset=manifest \
        --set data.manifest=/data/labels.parquet --num-samples 20 --gpus-per-trial 0.5
    python sweeps/folder.py --resume --name NAME

Layouts: docs/datasets.md. See docs/sweeps.md.
"""

from dmx.cli.sweep import main

PRESET = "folder"

if __name__ == "__main__":
    raise SystemExit(main(PRESET, description=__doc__))
