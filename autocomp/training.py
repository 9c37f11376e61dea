"""Plain supervised training, used to train the embedded default model on the spot."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from autocomp.data import Split


def train_classifier(model: nn.Module, split: Split, *, epochs: int = 15, lr: float = 0.05,
                     batch_size: int = 64, seed: int = 0, progress: bool = True) -> nn.Module:
    """SGD with momentum and a one-cycle schedule; returns ``model`` in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps = epochs * ((len(split) + batch_size - 1) // batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    bar = tqdm(total=steps, desc="training", disable=not progress, leave=False)
    for _ in range(epochs):
        for x, y in split.batches(batch_size, shuffle=True, generator=generator):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()
