"""The seed papers' experiments as ready-made spaces (``h2a study run --preset NAME``).

Every preset starts from the README's CPU recipe (EfficientNet-Lite0 from ImageNet, 128 px
squash framed on the hand, AdamW lr 2e-3 with a cosine schedule, L1, light augmentation, 10%
held out and 5% validation) and changes only what its question is about. Nothing names a device or a
precision: the same command trains on the settings' device (a GPU when there is one, bf16
autocast there) and ``--trial-minutes`` sets how much each trial gets, so a preset is small
on a CPU and scales up on a GPU. Arm presets declare their reference arm.
"""

from __future__ import annotations

import copy

from h2a.studies.space import Space, SpaceError, parse_space

# The CPU recipe's flags (recipes/boneage_cpu.sh), as space settings; a trial's time budget binds
# first, so 14 epochs here stands for "as many as the budget allows" (the recipe itself runs 10).
RECIPE_BASE = {
    "arch": "efficientnet_lite0", "pretrained": True, "image_size": 128, "resize": "squash", "hand_crop": True,
    "epochs": 14, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-4, "optimizer": "adamw",
    "scheduler": "cosine", "loss": "l1", "shift": 0.03, "rotation": 5.0, "zoom": 0.05,
    "bn_momentum": 0.1, "freeze": 0, "holdout_fraction": 0.1, "val_fraction": 0.05,
}

_SCHEDULERS = {"step": "StepLR", "exponential": "ExponentialLR", "plateau": "ReduceLROnPlateau",
               "cyclic": "CyclicLR", "cosine": "cosine"}
# SGD (Nesterov momentum 0.9) needs a larger step than Adam's 2e-3 to move in a short budget.
_OPTIMIZER_LR = {"sgd": 2e-2, "adam": 2e-3}

PRESETS: dict[str, dict] = {
    "sex-input": {
        "description": "Does feeding sex to the model help? (seed: validation MAE 7.21 with, 9.44 without)",
        "arms": {"with-sex": {"use_sex": True}, "without-sex": {"use_sex": False}},
        "reference": "with-sex",
    },
    "transfer": {
        "description": "ImageNet pretraining against random initialisation (seed: 8.8 vs 10.8 months)",
        "arms": {"imagenet": {"pretrained": True}, "random-init": {"pretrained": False}},
        "reference": "imagenet",
    },
    "freeze": {
        "description": "How many of the first backbone blocks to freeze while fine-tuning",
        "arms": {f"freeze-{n}": {"freeze": n} for n in (0, 2, 4, 6)},
        "reference": "freeze-0",
    },
    "width": {
        "description": "16BitNet's Inception width multiplier (seed: chosen by HPO, test MAE 5.6)",
        # Width != 1 trunks are hand-written (no ImageNet weights), so every arm starts from scratch.
        "base": {"arch": "inception_v3", "pretrained": False},
        "arms": {f"width-{w:g}": {"width_mult": w} for w in (0.5, 0.75, 1.0, 1.4)},
        "reference": "width-1",
    },
    "scheduler": {
        "description": "The seeds' optimiser and LR-schedule list: SGD vs Adam x StepLR, ExponentialLR, "
                       "ReduceLROnPlateau, CyclicLR and cosine",
        "arms": {f"{opt}-{sched}": {"optimizer": opt, "scheduler": sched, "lr": _OPTIMIZER_LR[opt]}
                 for opt in ("adam", "sgd") for sched in _SCHEDULERS},
        "reference": "adam-cosine",
    },
    "recipe-search": {
        "description": "Search around the CPU recipe under a fixed time budget per trial",
        "params": {
            "lr": {"type": "float", "low": 5e-4, "high": 6e-3, "log": True},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
            "image_size": {"type": "categorical", "choices": [96, 128, 160]},
            "shift": {"type": "float", "low": 0.0, "high": 0.08},
            "rotation": {"type": "float", "low": 0.0, "high": 15.0},
            "zoom": {"type": "float", "low": 0.0, "high": 0.15},
            "aug_gamma": {"type": "float", "low": 0.0, "high": 0.3},
            "aug_contrast": {"type": "float", "low": 0.0, "high": 0.3},
            "drop_path": {"type": "float", "low": 0.0, "high": 0.3},
            "loss": {"type": "categorical", "choices": ["l1", "huber"]},
        },
    },
    "clusters": {
        "description": "Does clustering group children by sex? UMAP + k-means ARI/NMI vs sex and age band for "
                       "ImageNet, bone-age and sex embeddings",
        "clusters": {"k": 2},
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_raw(name: str) -> dict:
    """The preset as a YAML-shaped mapping: the recipe base under the preset's own settings."""
    if name not in PRESETS:
        raise SpaceError(f"unknown preset {name!r} (one of {', '.join(PRESETS)})")
    raw = copy.deepcopy(PRESETS[name])
    raw["base"] = {**RECIPE_BASE, **raw.get("base", {})}
    return raw


def get_preset(name: str) -> Space:
    return parse_space(preset_raw(name), f"preset {name}")
