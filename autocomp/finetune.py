"""Fine-tune a run's best model with knowledge distillation from the original (Hinton et al. 2015).

The loss is ``alpha * T^2 * KL(softmax(student/T) || softmax(teacher/T)) + (1 - alpha) * CE(student, y)``;
with ``kd=False`` it is plain cross-entropy. The compressed architecture is fixed: pruned
channels stay gone, only the remaining weights are trained.

Example:
    >>> result = finetune_run("runs/r20-ddpg", epochs=2)  # doctest: +SKIP
    >>> result["test_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from autocomp.config import SearchConfig
from autocomp.evaluate import accuracy
from autocomp.files import save_torch, write_text
from autocomp.training import train


def finetune_run(run_dir: str | Path, *, epochs: int, lr: float = 0.01, batch_size: int = 128, temperature: float = 4.0,
                 alpha: float = 0.9, kd: bool = True, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the best model of a run; write ``finetuned/`` and a ``finetuned`` section in summary.json."""
    from autocomp.api import load_compressed
    from autocomp.runners.setup import load_config_data, prepare_model

    run_dir = Path(run_dir)
    student = load_compressed(run_dir)
    config = SearchConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if config.threads:
        torch.set_num_threads(config.threads)
    data = load_config_data(config)
    teacher = prepare_model(config, data, progress=progress) if kd else None
    start = time.perf_counter()
    losses = train(student, data.train, epochs=epochs, lr=lr, batch_size=batch_size, teacher=teacher,
                   temperature=temperature, alpha=alpha, seed=config.seed, progress=progress,
                   desc="fine-tune (KD)" if kd else "fine-tune")
    out = run_dir / "finetuned"
    out.mkdir(exist_ok=True)
    save_torch(student.state_dict(), out / "model.pt")
    shutil.copy(run_dir / "best" / "plan.json", out / "plan.json")
    result = {
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "distillation": kd,
        "temperature": temperature if kd else None, "alpha": alpha if kd else None,
        "train_images": len(data.train), "epoch_losses": [round(loss, 5) for loss in losses],
        "seconds": round(time.perf_counter() - start, 1),
        "val_accuracy": accuracy(student, data.val), "test_accuracy": accuracy(student, data.test),
    }
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["finetuned"] = result
    write_text(summary_file, json.dumps(summary, indent=1) + "\n")
    return result
