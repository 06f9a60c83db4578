"""Plain supervised training for the baseline networks (cross-entropy, Adam, cosine decay)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import ImageDataset
from ..training import random_shift


def train_classifier(model: nn.Module, dataset: ImageDataset, *, epochs: int, lr: float = 3e-3,
                     batch_size: int = 128, augment_shift: int = 2, seed: int = 0,
                     max_steps: int | None = None, progress: bool = False) -> nn.Module:
    """Train in place with the same augmentation as AgileNN; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(dataset) / batch_size)
    total = min(epochs * steps_per_epoch, max_steps or epochs * steps_per_epoch)
    step = 0
    model.train()
    with tqdm(total=total, disable=not progress, desc=type(model).__name__) as bar:
        while step < total:
            order = torch.randperm(len(dataset), generator=generator)
            for start in range(0, len(order), batch_size):
                if step >= total:
                    break
                images, labels = dataset.batch(order[start : start + batch_size])
                images = random_shift(images, augment_shift, generator)
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: nn.Module, dataset: ImageDataset, batch_size: int = 1000) -> float:
    correct = 0
    for start in range(0, len(dataset), batch_size):
        images, labels = dataset.batch(slice(start, start + batch_size))
        correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(dataset)
