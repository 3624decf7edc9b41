"""python benchmarks/shapes_difficulty.py [--epochs 6]

Shows that the embedded `shapes` dataset is hard enough for architecture choices to matter:
a template matcher (nearest class mean) and a linear model on raw pixels against a small
CNN (`conf/arch/small.yaml`), all on the same seeded train/val split.
Prints validation accuracies and the CNN's margin over the linear model.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from convsweep.lightning_modules.data import load_dataset
from convsweep.lightning_modules.runner import train_model
from convsweep.search.compose import compose_config
from convsweep.search.train import specs_from_config


def flat(images: torch.Tensor) -> np.ndarray:
    return images.reshape(len(images), -1).float().div(255).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    cfg = compose_config([f"trainer.max_epochs={args.epochs}"])
    data = load_dataset(cfg.dataset)
    x_train, y_train = flat(data.train.images), data.train.labels.numpy()
    x_val, y_val = flat(data.val.images), data.val.labels.numpy()

    means = np.stack([x_train[y_train == k].mean(0) for k in range(data.num_classes)])
    nearest_mean = float((np.argmin(((x_val[:, None] - means[None]) ** 2).sum(-1), 1) == y_val).mean())
    with threadpool_limits(1):  # sklearn and torch thread pools fight on 2 cores
        linear = LogisticRegression(max_iter=2000, C=1.0).fit(x_train, y_train)
    linear_acc = float(linear.score(x_val, y_val))

    arch, optim = specs_from_config(cfg)
    result = train_model(data, arch, optim, cfg.trainer, seed=0)
    cnn_acc = float(result.best_value)

    print(f"shapes: {data.sizes()} images {data.input_shape}, {data.num_classes} classes (chance {1 / data.num_classes:.3f})")
    print(f"nearest class mean (pixels)   val/acc = {nearest_mean:.3f}")
    print(f"logistic regression (pixels)  val/acc = {linear_acc:.3f}")
    print(f"small CNN, {args.epochs} epochs ({result.plan.params:,} params)  val/acc = {cnn_acc:.3f}")
    print(f"CNN error / linear error = {(1 - cnn_acc) / (1 - linear_acc):.3f}  (margin {cnn_acc - linear_acc:+.3f})")


if __name__ == "__main__":
    main()
