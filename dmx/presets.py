"""Named paper settings.

Each preset is a set of dotted-key overrides of the defaults in `dmx.config` (which already are the
reference CIFAR-10 recipe: lr 0.02 /10 at epoch 150, SGD 0.9 / 5e-4, batch 64, alpha 4, T 0.5,
p_threshold 0.5, 10 warmup epochs, PreAct ResNet-18, 301 epochs). Every value set here carries its
source. "Appendix" is the DivideMix paper's appendix table of lambda_u per setting; "Paper"
is its experimental setup (p_threshold 0.6 at 90% noise, 0.5 otherwise). Settings the reference
derives from the dataset and the noise (warmup length, warmup confidence penalty, loss averaging at
90% noise) are not set here: they are "auto" fields of the config (`Config.resolved`), so they
stay right when a preset's dataset or noise is overridden.
"""

from __future__ import annotations

from typing import Any

from dmx.config import Config, ConfigError

_CIFAR100 = {"data.dataset": "cifar100"}  # warmup 30 epochs: auto (Train_cifar.py)
_HIGH_NOISE = {
    # Paper, experimental setup: tau = 0.6 at 90% noise, 0.5 otherwise. Not the reference README:
    # the reference script's default is 0.5 and its README gives no per-setting value.
    "dividemix.p_threshold": 0.6,
}


def _sym(rate: float) -> dict[str, Any]:
    return {"noise.mode": "sym", "noise.rate": rate}


def _human(file: str, key: str) -> dict[str, Any]:
    return {"noise.mode": "human", "noise.human_file": file, "noise.human_key": key}


PRESETS: dict[str, dict[str, Any]] = {
    # ---- CIFAR-10 (paper Table 1) ----------------------------------------------------------
    "cifar10-sym-0.2": {**_sym(0.2), "dividemix.lambda_u": 0.0},  # Appendix: λu 0 (96.1 best)
    "cifar10-sym-0.5": {**_sym(0.5), "dividemix.lambda_u": 25.0},  # Appendix: λu 25 (94.6)
    "cifar10-sym-0.8": {**_sym(0.8), "dividemix.lambda_u": 25.0},  # Appendix: λu 25 (93.2)
    "cifar10-sym-0.9": {**_sym(0.9), "dividemix.lambda_u": 50.0, **_HIGH_NOISE},  # Appendix: 50
    "cifar10-asym-0.4": {
        "noise.mode": "asym",
        "noise.rate": 0.4,
        "dividemix.lambda_u": 0.0,  # Appendix: λu 0 for asym 40% (93.4); penalty in warmup: auto
    },
    # ---- CIFAR-100 (paper Table 1) ---------------------------------------------------------
    "cifar100-sym-0.2": {**_CIFAR100, **_sym(0.2), "dividemix.lambda_u": 25.0},  # Appendix (77.3)
    "cifar100-sym-0.5": {**_CIFAR100, **_sym(0.5), "dividemix.lambda_u": 150.0},  # Appendix (74.6)
    "cifar100-sym-0.8": {**_CIFAR100, **_sym(0.8), "dividemix.lambda_u": 150.0},  # Appendix (60.2)
    "cifar100-sym-0.9": {
        **_CIFAR100,
        **_sym(0.9),
        "dividemix.lambda_u": 150.0,  # Appendix (31.5)
        **_HIGH_NOISE,
    },
    # ---- CIFAR-10N / CIFAR-100N: real human labels (Wei et al., ICLR 2022) -------------------
    # The label file (CIFAR-10_human.pt / CIFAR-100_human.pt from the CIFAR-N release) is looked
    # up in data.root unless noise.human_file names another path. lambda_u is dmx's choice by
    # analogy with the DivideMix appendix at the nearest symmetric noise rate (the CIFAR-N paper
    # gives none): aggre 9.0% and random1..3 ~17% -> as sym 20% (0); worst 40.2% -> as sym 50%
    # (25); CIFAR-100N noisy 40.2% -> as CIFAR-100 sym 50% (150).
    **{
        f"cifar10n-{tag}": {**_human("CIFAR-10_human.pt", key), "dividemix.lambda_u": lam}
        for tag, key, lam in (
            ("aggre", "aggre_label", 0.0),
            ("random1", "random_label1", 0.0),
            ("random2", "random_label2", 0.0),
            ("random3", "random_label3", 0.0),
            ("worst", "worse_label", 25.0),
        )
    },
    "cifar100n-noisy": {
        **_CIFAR100,
        **_human("CIFAR-100_human.pt", "noisy_label"),
        "dividemix.lambda_u": 150.0,
    },
    # ---- Clothing1M (paper Table 3): Train_clothing1M.py / dataloader_clothing1M.py --------
    "clothing1m": {
        "data.dataset": "clothing1m",
        "noise.mode": "none",  # real-world noisy labels, used as given
        "model.name": "resnet50",  # torchvision ResNet-50, new 2048 -> 14 head
        "model.pretrained": True,  # models.resnet50(pretrained=True)
        "optim.lr": 0.002,  # --lr 0.002
        "optim.lr_decay_epochs": [40],  # `if epoch >= 40: lr /= 10`
        "optim.weight_decay": 1e-3,  # optim.SGD(..., weight_decay=1e-3)
        "optim.batch_size": 32,  # --batch_size 32
        "optim.warmup_batch_size": 64,  # warmup loader: batch_size * 2
        "dividemix.alpha": 0.5,  # --alpha 0.5
        "dividemix.lambda_u": 0.0,  # --lambda_u 0 (and no Lu at all: mix_labeled_only)
        "dividemix.warmup_epochs": 1,  # `if epoch < 1:  # warm up`
        "dividemix.warmup_confidence_penalty": True,  # warmup(): L = loss + conf_penalty
        "dividemix.resample": "balanced",  # mode='all' with num_samples: balanced per epoch
        "dividemix.num_batches": 1000,  # --num_batches 1000
        "dividemix.mix_labeled_only": True,  # net(mixed_input[:batch_size*2]), Lx + penalty
        "run.epochs": 81,  # range(num_epochs + 1), --num_epochs 80
        "run.best_on_clean_val": True,  # val(): best net per clean val, test() with both best
    },
    # ---- WebVision 1.0, first 50 classes (paper Table 4): Train_webvision.py ---------------
    "webvision-50": {
        "data.dataset": "webvision",
        "noise.mode": "none",  # real-world (web) noisy labels, used as given
        "model.name": "inception_resnet_v2",  # InceptionResNetV2(num_classes=50), from scratch
        "optim.lr": 0.01,  # --lr 0.01
        "optim.lr_decay_epochs": [40],  # `if epoch >= 40: lr /= 10`
        "optim.weight_decay": 5e-4,
        "optim.batch_size": 32,  # --batch_size 32
        "optim.warmup_batch_size": 64,  # warmup loader: batch_size * 2
        "dividemix.alpha": 0.5,  # --alpha 0.5
        "dividemix.lambda_u": 0.0,  # --lambda_u 0 (no Lu: mix_labeled_only)
        "dividemix.warmup_epochs": 1,  # warm_up = 1
        "dividemix.warmup_confidence_penalty": False,  # warmup(): `L = loss #+ penalty`
        "dividemix.mix_labeled_only": True,  # net(mixed_input[:batch_size*2]), Lx + penalty
        "run.epochs": 81,  # range(num_epochs + 1), --num_epochs 80
    },
    # ---- CUB-200-2011 with synthetic symmetric noise: dmx's own recipe ---------------------
    # No published DivideMix recipe exists for CUB: the fine-tuning optimiser of the reference's
    # Clothing1M script (also an ImageNet-pretrained ResNet-50: lr 0.002, wd 1e-3, batch 32)
    # with the CIFAR DivideMix loss (alpha 4, lambda_u 25, 10 warmup epochs, synthetic noise).
    # Not validated against a published number.
    **{
        f"cub200-sym-{rate}": {
            "data.dataset": "cub200",
            **_sym(rate),
            "model.name": "resnet50",
            "model.pretrained": True,
            "optim.lr": 0.002,
            "optim.lr_decay_epochs": [40],
            "optim.weight_decay": 1e-3,
            "optim.batch_size": 32,
            "optim.warmup_batch_size": 64,
            "dividemix.lambda_u": 25.0,
            "run.epochs": 61,
        }
        for rate in (0.2, 0.4, 0.5)
    },
    # ---- Your own images: dmx's starting point, not a paper setting -----------------------
    # An image folder (or, with data.dataset=manifest, a label manifest) whose labels are used
    # as given; an ImageNet-pretrained torchvision ResNet-50 with a new head, fine-tuned with
    # the optimiser of the reference's Clothing1M script and the CIFAR DivideMix loss.
    "folder": {
        "data.dataset": "folder",
        "noise.mode": "none",  # the folder names are the (noisy) labels
        "model.name": "torchvision:resnet50",
        "model.pretrained": True,
        "optim.lr": 0.002,
        "optim.lr_decay_epochs": [40],
        "optim.weight_decay": 1e-3,
        "optim.batch_size": 32,
        "optim.warmup_batch_size": 64,
        "dividemix.lambda_u": 25.0,
        "run.epochs": 61,
    },
    # ---- CPU-scale development preset (not a paper setting) ---------------------------------
    "digits-sym-0.5": {
        "data.dataset": "digits",  # scikit-learn's bundled 8x8 digits: a tiny real dataset
        **_sym(0.5),
        "dividemix.lambda_u": 25.0,  # as CIFAR-10 sym 50%
        "model.name": "small_cnn",  # PreAct ResNet-18 is far too big for 8x8 images
        "run.epochs": 30,  # converges in about a minute on 2 CPU cores
        "dividemix.warmup_epochs": 5,  # ~1/3 of training, like 10/30 on CIFAR before memorising
        "optim.lr_decay_epochs": [20],
        "optim.batch_size": 32,  # 1.3k training images: keep ~40 steps per epoch
        "optim.warmup_batch_size": 64,
    },
}


def get_preset(name: str) -> Config:
    """The Config of a named preset (`dmx presets` lists them)."""
    if name not in PRESETS:
        raise ConfigError(
            f"Unknown preset {name!r}. Known presets: {', '.join(sorted(PRESETS))} "
            "(`dmx presets` lists them with their settings)."
        )
    return Config(preset=name).with_overrides(PRESETS[name])
