"""What a search needs: its data, the user's (or the embedded) trained model, and the
process-wide settings it runs under, restored when it ends."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from autocomp.config import SearchConfig
from autocomp.data import DataBundle, Preprocess, load_data
from autocomp.data.bundle import LoaderSettings, Subsets
from autocomp.data.sources import DEFAULT_PREPROCESS, default_workers
from autocomp.errors import ConfigError, IncompatibleModelError
from autocomp.files import cache_root, save_torch
from autocomp.models import build_model, load_weights
from autocomp.training import train

TRAIN_ON_THE_SPOT: dict[str, dict[str, Any]] = {
    # threads: the fastest for this small model (more threads only add synchronisation: on a
    # 2-core machine 1 thread trained it in a few seconds, 2 threads took many times longer)
    "digits_cnn": {"epochs": 15, "lr": 0.05, "batch_size": 64, "schedule": "one_cycle", "threads": 1}}


@contextmanager
def process_settings(*, threads: int | None, seed: int) -> Iterator[None]:
    """Run a block with ``threads`` torch threads (None: as they are), torch seeded with ``seed``
    and Optuna logging warnings only; afterwards the caller's threads, random states (torch,
    numpy and ``random``, which stable-baselines3 reseeds) and Optuna log level are back.
    """
    saved_threads = torch.get_num_threads()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    verbosity = optuna.logging.get_verbosity()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            if threads:
                torch.set_num_threads(threads)
            torch.manual_seed(seed)
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            yield
        finally:
            torch.set_num_threads(saved_threads)
            np.random.set_state(numpy_state)
            random.setstate(python_state)
            optuna.logging.set_verbosity(verbosity)


def load_config_data(config: SearchConfig, subsets: Subsets | None = None) -> DataBundle:
    """The data of ``config``; ``subsets``: the validation and calibration images of the run (a resume)."""
    kind = "imagefolder" if config.data.startswith("imagefolder:") else config.data
    default = DEFAULT_PREPROCESS.get(kind, DEFAULT_PREPROCESS["imagefolder"])
    preprocess = Preprocess.parse(mean=config.mean, std=config.std, file=config.preprocess, default=default)
    workers = default_workers() if config.loader_workers is None else config.loader_workers
    return load_data(config.data, data_dir=config.data_dir, val_size=config.val_size, preprocess=preprocess,
                     image_size=config.image_size, resize=config.resize, subsets=subsets,
                     calib_size=config.calib_batches * config.calib_batch_size if config.recalibrate else 0,
                     loader=LoaderSettings(workers), cache_mb=config.cache_mb)


def prepare_model(config: SearchConfig, data: DataBundle, *, progress: bool = True) -> nn.Module:
    """The trained model to compress: ``--weights``, or the embedded default trained and cached."""
    model = build_model(config.model, num_classes=config.num_classes or data.num_classes)
    _check_output(model, data)  # before any loading or training: fail on a shape mismatch at once
    if config.weights is not None:
        load_weights(model, config.weights)
    elif config.model in TRAIN_ON_THE_SPOT:
        recipe = TRAIN_ON_THE_SPOT[config.model]
        data_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.data)
        root = cache_root()
        cached = root / f"{config.model}-{data_key}-val{len(data.val)}-e{recipe['epochs']}.pt" if root else None
        if cached is not None and cached.is_file():
            model.load_state_dict(torch.load(cached, weights_only=True))
        else:
            recipe = dict(recipe)
            saved = torch.get_num_threads()
            torch.set_num_threads(recipe.pop("threads", saved))
            try:
                train(model, data.train, progress=progress, **recipe)
            finally:
                torch.set_num_threads(saved)
            if cached is not None:
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
            out = model.eval()(data.val.example(2))
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
