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
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from autocomp.config import SearchConfig
from autocomp.data import Split
from autocomp.errors import ConfigError
from autocomp.evaluate import accuracy


def distill(student: nn.Module, teacher: nn.Module | None, split: Split, *, epochs: int, lr: float = 0.01,
            batch_size: int = 128, temperature: float = 4.0, alpha: float = 0.9, seed: int = 0,
            progress: bool = True) -> list[float]:
    """Train ``student`` on ``split`` (with soft targets from ``teacher`` when given); returns epoch losses."""
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs} must be at least 1.")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps = epochs * ((len(split) + batch_size - 1) // batch_size)
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if teacher is not None:
        teacher.eval()
    losses = []
    bar = tqdm(total=steps, desc="fine-tune" + (" (KD)" if teacher is not None else ""), disable=not progress)
    for _ in range(epochs):
        student.train()
        total, count, correct = 0.0, 0, 0
        for x, y in split.batches(batch_size, shuffle=True, generator=generator):
            logits = student(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / temperature, dim=1)
                kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
                loss = alpha * temperature**2 * kd + (1 - alpha) * loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(y)
            count += len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.update()
            bar.set_postfix(loss=f"{total / count:.3f}", acc=f"{correct / count:.3f}")
        losses.append(total / count)
    bar.close()
    return losses


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
    losses = distill(student, teacher, data.train, epochs=epochs, lr=lr, batch_size=batch_size,
                     temperature=temperature, alpha=alpha, seed=config.seed, progress=progress)
    out = run_dir / "finetuned"
    out.mkdir(exist_ok=True)
    torch.save(student.state_dict(), out / "model.pt")
    shutil.copy(run_dir / "best" / "plan.json", out / "plan.json")
    result = {
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "distillation": kd,
        "temperature": temperature if kd else None, "alpha": alpha if kd else None,
        "train_images": len(data.train), "epoch_losses": [round(l, 5) for l in losses],
        "seconds": round(time.perf_counter() - start, 1),
        "val_accuracy": accuracy(student, data.val), "test_accuracy": accuracy(student, data.test),
    }
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["finetuned"] = result
    summary_file.write_text(json.dumps(summary, indent=1) + "\n")
    return result
