"""Loading what a search needs: data and the user's (or the embedded) trained model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from autocomp.config import SearchConfig
from autocomp.data import DataBundle, Preprocess, load_data
from autocomp.data.sources import DEFAULT_PREPROCESS
from autocomp.errors import ConfigError, IncompatibleModelError
from autocomp.files import save_torch
from autocomp.models import build_model, load_weights
from autocomp.training import train

TRAIN_ON_THE_SPOT = {"digits_cnn": {"epochs": 15, "lr": 0.05, "batch_size": 64, "schedule": "one_cycle"}}


def cache_dir() -> Path:
    path = Path(os.environ.get("AUTOCOMP_CACHE", "~/.cache/autocomp")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_config_data(config: SearchConfig) -> DataBundle:
    kind = "imagefolder" if config.data.startswith("imagefolder:") else config.data
    default = DEFAULT_PREPROCESS.get(kind, DEFAULT_PREPROCESS["imagefolder"])
    preprocess = Preprocess.parse(mean=config.mean, std=config.std, file=config.preprocess, default=default)
    return load_data(config.data, data_dir=config.data_dir, val_size=config.val_size,
                     preprocess=preprocess, image_size=config.image_size)


def prepare_model(config: SearchConfig, data: DataBundle, *, progress: bool = True) -> nn.Module:
    """The trained model to compress: ``--weights``, or the embedded default trained and cached."""
    model = build_model(config.model, num_classes=config.num_classes or data.num_classes)
    _check_output(model, data)  # before any loading or training: fail on a shape mismatch at once
    if config.weights is not None:
        load_weights(model, config.weights)
    elif config.model in TRAIN_ON_THE_SPOT:
        recipe = TRAIN_ON_THE_SPOT[config.model]
        data_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.data)
        cached = cache_dir() / f"{config.model}-{data_key}-val{len(data.val)}-e{recipe['epochs']}.pt"
        if cached.is_file():
            model.load_state_dict(torch.load(cached, weights_only=True))
        else:
            train(model, data.train, progress=progress, **recipe)
            save_torch(model.state_dict(), cached)
    else:
        raise ConfigError(
            f"--model {config.model} needs --weights: only {sorted(TRAIN_ON_THE_SPOT)} is trained on the spot. "
            "Pass the state_dict of your trained model."
        )
    return model.eval()


def _check_output(model: nn.Module, data: DataBundle) -> None:
    try:
        with torch.no_grad():
            out = model.eval()(data.val.x[:2])
    except RuntimeError as exc:
        raise IncompatibleModelError(
            f"the model cannot take this data's inputs of shape {list(data.input_shape)} ({str(exc).splitlines()[0]}): "
            "check --data, --image-size and --model."
        ) from exc
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise IncompatibleModelError(
            f"the model outputs shape {list(out.shape[1:])} but {data.name} has {data.num_classes} classes: "
            "pass --num-classes or a model built for this data."
        )
