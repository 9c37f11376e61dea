"""Fine-tune a run's best model with knowledge distillation from the original (Hinton et al. 2015).

The loss is ``alpha * T^2 * KL(softmax(student/T) || softmax(teacher/T)) + (1 - alpha) * CE(student, y)``;
with ``kd=False`` it is plain cross-entropy. The compressed architecture is fixed: pruned
channels stay gone, only the remaining weights are trained.

Example:
    >>> result = finetune_run("runs/r20-ddpg", epochs=2)  # doctest: +SKIP
    >>> result["test_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from typing import Any

from torch import nn

from autocomp.data import Split
from autocomp.device import resolve_device
from autocomp.evaluate import accuracy
from autocomp.rundir import RunDir
from autocomp.training import train

CLIP_NORM = 5.0
"""The largest gradient norm of a fine-tuning step. A compressed model starts far from the
original, and its first steps' gradients are large: a ResNet-20 plan with 9 int8 layers, at the
default learning rate without clipping, went from a distillation loss of 5.4 to over 400 within
20 steps (0.17 validation accuracy after 80); clipped, it ended 3 epochs at 0.83 test accuracy
(bench/RESULTS.md, section ``finetune-clip``)."""


def distill(student: nn.Module, teacher: nn.Module | None, split: Split, *, epochs: int, lr: float = 0.01,
            batch_size: int = 128, temperature: float = 4.0, alpha: float = 0.9, seed: int = 0,
            progress: bool = True) -> list[float]:
    """The fine-tune of ``autocomp finetune``, on any model (a plan's or a peer's, so that both get
    the same): distillation from ``teacher`` (``None``: cross-entropy alone) over ``split``, SGD
    with a cosine schedule, every step's gradient clipped to :data:`CLIP_NORM`. Returns the
    mean loss of each epoch; ``student`` is trained in place and left in eval mode."""
    return train(student, split, epochs=epochs, lr=lr, batch_size=batch_size, teacher=teacher,
                 temperature=temperature, alpha=alpha, seed=seed, progress=progress, clip_norm=CLIP_NORM,
                 desc="fine-tune (KD)" if teacher is not None else "fine-tune")


def finetune_run(run_dir: str | os.PathLike[str], *, epochs: int, lr: float = 0.01, batch_size: int = 128,
                 temperature: float = 4.0, alpha: float = 0.9, kd: bool = True, progress: bool = True,
                 device: str | None = None) -> dict[str, Any]:
    """Fine-tune the best model of a run on ``device`` (default: the run's); write ``finetuned/``
    and a ``finetuned`` section in summary.json. The training images stream with augmentation."""
    from autocomp.api import load_compressed
    from autocomp.runners.setup import load_config_data, prepare_model, process_settings

    run = RunDir(run_dir)
    student = load_compressed(run.path)
    config = run.read_config()
    trial = run.read_summary()["best"].get("trial")
    target = resolve_device(device or config.device)
    with process_settings(threads=config.threads, seed=config.seed):
        data = load_config_data(config, run.read_subsets())
        teacher = prepare_model(config, data, progress=progress).to(target) if kd else None
        student = student.to(target)
        start = time.perf_counter()
        losses = distill(student, teacher, data.train, epochs=epochs, lr=lr, batch_size=batch_size,
                         temperature=temperature, alpha=alpha, seed=config.seed, progress=progress)
        run.save_finetuned(student.state_dict())
        result = {
            "trial": trial, "epochs": epochs, "lr": lr, "batch_size": batch_size, "distillation": kd,
            "temperature": temperature if kd else None, "alpha": alpha if kd else None,
            "train_images": len(data.train), "epoch_losses": [round(loss, 5) for loss in losses],
            "seconds": round(time.perf_counter() - start, 1), "device": str(target),
            "val_accuracy": accuracy(student, data.val), "test_accuracy": accuracy(student, data.test),
        }
    run.update_summary("finetuned", result)
    return result
