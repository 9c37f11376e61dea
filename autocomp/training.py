"""Supervised training, optionally distilled from a teacher (Hinton et al. 2015).

Used to train the embedded default model on the spot (one-cycle schedule, no teacher) and to
fine-tune compressed models (cosine schedule, soft targets from the original model).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from autocomp.data import Split
from autocomp.device import model_device
from autocomp.errors import ConfigError
from autocomp.progress import bar as progress_bar


def train(model: nn.Module, split: Split, *, epochs: int, lr: float, batch_size: int = 128,
          teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9,
          schedule: str = "cosine", seed: int = 0, progress: bool = True, desc: str = "training",
          penalty: Callable[[], torch.Tensor] | None = None, max_steps: int | None = None,
          augment: bool = True, clip_norm: float | None = None) -> list[float]:
    """SGD (Nesterov momentum 0.9, weight decay 5e-4); returns the mean loss of each epoch.

    With a ``teacher`` the loss is ``alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE``;
    ``penalty()`` is added to it (a regulariser on the model's parameters). ``max_steps`` stops
    training after that many batches (the schedule spans them). Torch's global random state is
    the caller's again afterwards. Batches go to the model's device; ``augment`` draws them with the
    data set's training augmentation where it has one (streamed images: random crops and flips).
    ``clip_norm``: the gradient's largest norm (rescaled to it when larger).
    """
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs} must be at least 1.")
    with torch.random.fork_rng(devices=[]):  # the model's random layers draw from it: keep the caller's
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        steps = epochs * ((len(split) + batch_size - 1) // batch_size)
        if max_steps is not None:
            steps = min(steps, max_steps)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        scheduler: torch.optim.lr_scheduler.LRScheduler = (
            torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps) if schedule == "one_cycle"
            else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        )
        device = model_device(model)
        if teacher is not None:
            teacher.eval()
        losses = []
        done = 0
        bar = progress_bar(total=steps, desc=desc, disable=not progress, leave=False)
        for _ in range(epochs):
            model.train()
            total, count, correct = 0.0, 0, 0
            for x, y in split.batches(batch_size, shuffle=True, generator=generator, device=device, augment=augment):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if teacher is not None:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x) / temperature, dim=1)
                    kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
                    loss = alpha * temperature**2 * kd + (1 - alpha) * loss
                if penalty is not None:
                    loss = loss + penalty()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(y)
                count += len(y)
                correct += int((logits.argmax(1) == y).sum())
                bar.set_postfix(loss=f"{total / count:.3f}", acc=f"{correct / count:.3f}", refresh=False)
                bar.update()
                done += 1
                if done >= steps:
                    break
            losses.append(total / count)
            if done >= steps:
                break
        bar.close()
        model.eval()
        return losses
