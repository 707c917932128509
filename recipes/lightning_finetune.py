"""Train a small Vision Transformer on scikit-learn's digits with PyTorch Lightning, AdamW vs Lion.

Offline: the 1797 8x8 digit images ship with scikit-learn. Each 8x8 image is cut into 2x2 patches
(16 tokens + a class token) for a few-layer ViT written below. Both runs start from the same
initialization and data order; their curves come from Lightning's `CSVLogger`.

    python recipes/lightning_finetune.py                                     # about a minute on 2 CPU cores
    python recipes/lightning_finetune.py --config recipes/lightning_finetune.yaml --epochs 30
    python recipes/lightning_finetune.py --optimizers '[lion]' --ratio 10

Online (or with local copies), another image-classification data set and a pretrained model:

    python recipes/lightning_finetune.py --dataset_name mnist --model '{image_size: 28, patch: 4}'
    python recipes/lightning_finetune.py --dataset_name cifar10 --image_column img \
        --model_name_or_path google/vit-base-patch16-224-in21k --batch_size 32 --epochs 3

`--dataset_name` is anything `datasets.load_dataset` takes (a hub name, or a local folder of
``<split>/<label>/<image>`` files); without a validation split, 20% of train is held out. Images are
fed to `--model_name_or_path` (a Hugging Face image classifier, its head resized to the labels)
through its own image processor, else to the ViT below as grayscale ``image_size`` squares.

Learning rates: `adamw_lr` and `adamw_weight_decay` are the AdamW setting; the Lion run uses
`lion_integrations.hparams.from_adamw(adamw_lr, adamw_weight_decay, ratio)`, i.e. lr / ratio and
weight decay x ratio (Chen et al. 2023: ratio 3 to 10). Both use linear warmup + cosine decay.
Writes `<output_dir>/lightning_loss.png` and prints each run's final validation accuracy and loss.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `recipes.*`, this checkout's package

from lion_integrations.discovery.data import shuffled_digits  # noqa: E402
from lion_integrations.hparams import DEFAULT_RATIO, from_adamw, param_groups  # noqa: E402
from lion_integrations.lightning import configure_lion  # noqa: E402
from lion_integrations.schedules import warmup_cosine  # noqa: E402
from recipes.common import require_datasets  # noqa: E402

OPTIMIZERS = ("adamw", "lion")


class ViT(nn.Module):
    """A pre-norm Vision Transformer for (B, 1, size, size) images: patch embedding, a learned class
    token and positions, `depth` encoder layers, and a linear head on the class token."""

    def __init__(self, image_size: int = 8, patch: int = 2, dim: int = 64, depth: int = 3, heads: int = 4,
                 mlp_ratio: float = 2.0, dropout: float = 0.1, classes: int = 10):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"Invalid patch: {patch!r} (must divide image_size={image_size!r})")
        self.embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.encoder(tokens)[:, 0]))


class PretrainedClassifier(nn.Module):
    """A Hugging Face image classifier (`AutoModelForImageClassification`) as images -> logits."""

    def __init__(self, name_or_path: str, labels: list[str]):
        super().__init__()
        from transformers import AutoModelForImageClassification

        self.model = AutoModelForImageClassification.from_pretrained(
            name_or_path, id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)}, ignore_mismatched_sizes=True,
        ).train()  # from_pretrained returns it in eval mode (dropout off)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class DigitsClassifier(pl.LightningModule):
    """Cross-entropy training of `ViT` (or of a pretrained classifier given by `model_name_or_path`);
    `optimizer` picks AdamW or Lion (from `from_adamw`)."""

    def __init__(self, optimizer: str = "lion", adamw_lr: float = 2e-3, adamw_weight_decay: float = 0.05,
                 ratio: float = DEFAULT_RATIO, betas: tuple[float, float] = (0.9, 0.99), warmup_steps: int = 30,
                 model: dict[str, Any] | None = None, lion_kwargs: dict[str, Any] | None = None,
                 model_name_or_path: str | None = None, labels: list[str] | None = None):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"Invalid optimizer: {optimizer!r} (expected one of {OPTIMIZERS})")
        self.save_hyperparameters()
        if model_name_or_path:
            self.net = PretrainedClassifier(model_name_or_path, labels or [str(i) for i in range(10)])
        else:
            self.net = ViT(**{**(model or {}), **({"classes": len(labels)} if labels else {})})

    def forward(self, images):
        return self.net(images)

    def _loss(self, batch, stage: str):
        images, labels = batch
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        self.log(f"{stage}_acc", accuracy, on_step=on_step, on_epoch=not on_step)
        return loss

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._loss(batch, "val")

    def configure_optimizers(self):
        h = self.hparams
        if h.optimizer == "lion":
            lion = from_adamw(h.adamw_lr, h.adamw_weight_decay, h.ratio)
            return configure_lion(self, **lion, betas=h.betas, scheduler="cosine", warmup_steps=h.warmup_steps,
                                  **(h.lion_kwargs or {}))
        optimizer = torch.optim.AdamW(param_groups(self, h.adamw_weight_decay), lr=h.adamw_lr)
        scheduler = warmup_cosine(optimizer, h.warmup_steps, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def digits_loaders(batch_size: int, seed: int, validation_fraction: float = 0.2) -> tuple[DataLoader, DataLoader]:
    """Train/validation loaders over scikit-learn's digits as [1, 8, 8] images in [0, 1]: the first
    `validation_fraction` of `shuffled_digits(seed)` validates, the rest trains, shuffled from `seed`."""
    features, labels = shuffled_digits(seed)
    images = features.view(-1, 1, 8, 8)
    n_val = int(len(labels) * validation_fraction)
    train_loader = DataLoader(TensorDataset(images[n_val:], labels[n_val:]), batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(TensorDataset(images[:n_val], labels[:n_val]), batch_size=256)
    return train_loader, val_loader


def hub_loaders(dataset_name: str, image_column: str, label_column: str, batch_size: int, seed: int,
                model_name_or_path: str | None, image_size: int) -> tuple[DataLoader, DataLoader, list[str]]:
    """Train/validation loaders over an image-classification data set `datasets` can load, and its labels.

    Images go through the pretrained model's image processor, or become grayscale `image_size`
    squares in [0, 1] for the ViT."""
    import numpy

    datasets = require_datasets()
    loaded = datasets.load_dataset(dataset_name)
    if "train" not in loaded:
        raise ValueError(f"Invalid dataset_name: {dataset_name!r} has no 'train' split (splits: {list(loaded)})")
    for column in (image_column, label_column):
        if column not in loaded["train"].column_names:
            raise ValueError(f"Invalid column {column!r}: {dataset_name!r} has {loaded['train'].column_names}")
    held_out = next((loaded[split] for split in ("validation", "test") if split in loaded), None)
    train = loaded["train"]
    if held_out is None:
        split = train.train_test_split(test_size=0.2, seed=seed)
        train, held_out = split["train"], split["test"]
    feature = train.features[label_column]
    labels = list(feature.names) if isinstance(feature, datasets.ClassLabel) else sorted({str(v) for v in train[label_column]})

    if model_name_or_path:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model_name_or_path)

        def pixels(images):
            return processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    else:
        def pixels(images):
            resized = [numpy.asarray(image.convert("L").resize((image_size, image_size))) for image in images]
            return torch.tensor(numpy.stack(resized), dtype=torch.float32).unsqueeze(1) / 255.0

    def tensors(part):
        targets = [value if isinstance(feature, datasets.ClassLabel) else labels.index(str(value)) for value in part[label_column]]
        return TensorDataset(pixels(part[image_column]), torch.tensor(targets, dtype=torch.long))

    train_loader = DataLoader(tensors(train), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return train_loader, DataLoader(tensors(held_out), batch_size=256), labels


def read_metrics(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} from a CSVLogger's metrics.csv."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(log_dir / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def plot(runs: dict[str, dict[str, list[tuple[int, float]]]], path: Path, smoothing: int = 10,
         title: str = "ViT on sklearn digits (8x8, 2x2 patches)") -> None:
    """Training loss (moving average over `smoothing` logged points) and validation loss/accuracy per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (train_axis, val_axis, acc_axis) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, series in runs.items():
        steps, losses = zip(*series["train_loss"])
        window = max(1, min(smoothing, len(losses)))
        smoothed = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                    for i in range(len(losses))]
        line, = train_axis.plot(steps, smoothed, label=name)
        train_axis.plot(steps, losses, color=line.get_color(), alpha=0.2, linewidth=0.8)
        val_axis.plot(*zip(*series["val_loss"]), marker="o", markersize=3, label=name)
        acc_axis.plot(*zip(*series["val_acc"]), marker="o", markersize=3, label=name)
    for axis, axis_title in ((train_axis, "training loss"), (val_axis, "validation loss"), (acc_axis, "validation accuracy")):
        axis.set_title(axis_title)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        axis.legend()
    train_axis.set_yscale("log")
    val_axis.set_yscale("log")
    figure.suptitle(f"{title}: AdamW vs Lion")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def load_data(dataset_name: str | None, image_column: str, label_column: str, batch_size: int, seed: int,
              model_name_or_path: str | None, model: dict[str, Any] | None) -> tuple[DataLoader, DataLoader, list[str] | None]:
    """(train loader, validation loader, label names): `hub_loaders` for a `dataset_name`, else
    `digits_loaders` (labels None: the digits 0-9)."""
    if not dataset_name:
        return (*digits_loaders(batch_size, seed), None)
    image_size = (model or {}).get("image_size", 8)
    return hub_loaders(dataset_name, image_column, label_column, batch_size, seed, model_name_or_path, image_size)


def fit(module: DigitsClassifier, train_loader: DataLoader, val_loader: DataLoader, epochs: int, log_root: Path,
        name: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float]]:
    """Train `module` on the CPU, logging to `log_root/name/metrics.csv`; prints and returns (its
    logged series, final metrics: val_acc, val_loss, train_loss, peak_lr, weight_decay, seconds)."""
    logger = CSVLogger(log_root, name=name, version="")
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=max(1, min(5, len(train_loader))),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    seconds = time.perf_counter() - started
    series = read_metrics(Path(logger.log_dir))
    optimizer = trainer.optimizers[0]
    final = {
        "val_acc": series["val_acc"][-1][1],
        "val_loss": series["val_loss"][-1][1],
        "train_loss": series["train_loss"][-1][1],
        "peak_lr": optimizer.param_groups[0]["initial_lr"],
        "weight_decay": optimizer.param_groups[0]["weight_decay"],
        "seconds": seconds,
    }
    print(
        f"{name:>5}: {type(optimizer).__name__} lr={final['peak_lr']:.3g} wd={final['weight_decay']:.3g} "
        f"| final val_acc={final['val_acc']:.4f} val_loss={final['val_loss']:.4f} "
        f"train_loss={final['train_loss']:.4f} | {trainer.global_step} steps in {seconds:.1f}s",
        flush=True,
    )
    return series, final


def main(
    optimizers: list[str] = list(OPTIMIZERS),
    epochs: int = 25,
    batch_size: int = 64,
    adamw_lr: float = 2e-3,
    adamw_weight_decay: float = 0.05,
    ratio: float = DEFAULT_RATIO,
    betas: tuple[float, float] = (0.9, 0.99),
    warmup_steps: int = 30,
    model: dict[str, Any] | None = None,
    lion_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    threads: int = 1,
    output_dir: str = "outputs",
    dataset_name: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    model_name_or_path: str | None = None,
) -> dict[str, dict[str, float]]:
    """Train one run per entry of `optimizers` and plot them; returns {optimizer: final metrics}.

    Args:
        optimizers: runs to make, from 'adamw' and 'lion'.
        epochs: passes over the 1437 training images.
        adamw_lr, adamw_weight_decay: the AdamW setting; Lion gets from_adamw(..., ratio).
        betas: Lion's (beta1, beta2).
        warmup_steps: linear warmup before cosine decay to 0 at the last step.
        model: ViT options (image_size, patch, dim, depth, heads, mlp_ratio, dropout).
        lion_kwargs: extra Lion arguments (e.g. {fused: false}).
        threads: torch CPU threads (1 is fastest for this tiny model).
        output_dir: where lightning_loss.png and the CSV logs (lightning_logs/<optimizer>) go.
        dataset_name: an image-classification data set for `datasets.load_dataset` instead of the
            digits (a hub name when online, or a local folder); `image_column`, `label_column` name
            its columns.
        model_name_or_path: a pretrained Hugging Face image classifier to fine-tune instead of the ViT.
    """
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise ValueError(f"Invalid optimizers: {name!r} (expected entries from {OPTIMIZERS})")
    torch.set_num_threads(threads)
    output = Path(output_dir)
    runs, finals = {}, {}
    for name in optimizers:
        pl.seed_everything(seed, verbose=False)  # same init, dropout and data order for every run
        train_loader, val_loader, labels = load_data(dataset_name, image_column, label_column, batch_size, seed,
                                                     model_name_or_path, model)
        module = DigitsClassifier(name, adamw_lr, adamw_weight_decay, ratio, betas, warmup_steps, model, lion_kwargs,
                                  model_name_or_path, labels)
        runs[name], finals[name] = fit(module, train_loader, val_loader, epochs, output / "lightning_logs", name)
    png = output / "lightning_loss.png"
    plot(runs, png, title=f"{model_name_or_path or 'ViT'} on {dataset_name or 'sklearn digits'}"
         if dataset_name or model_name_or_path else "ViT on sklearn digits (8x8, 2x2 patches)")
    print(f"wrote {png}")
    return finals


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False, args=sys.argv[1:])
