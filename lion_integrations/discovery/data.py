"""The proxy tasks' data, bundled with scikit-learn and Python only (nothing is downloaded).

* ``digits``: scikit-learn's 8x8 digits (1797 images, 10 classes), a fixed 1200/597 split of
  standardized pixels (`digits_split`, which the recipes and benchmarks use too).
* ``text``: next-character prediction from the `context` previous characters of the Python standard
  library's own source text (one-hot context, 48-symbol vocabulary), split by position: 400k
  characters of its top-level modules in name order (a..z).
* ``text2``: the same from the modules in reverse name order (z..a): disjoint text, for the search,
  so that ``text`` stays held out.
"""

from __future__ import annotations

import functools
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..checks import check_bool, check_int

DIGITS_IMAGES = 1797
DIGITS_CLASSES = 10
DIGITS_TRAIN_IMAGES = 1200  # the proxy task's training share; the other 597 images validate
VOCAB, TEXT_CHARS, VAL_SAMPLES = 48, 400_000, 4096


@dataclass
class Data:
    train: torch.Tensor  # features, or symbol ids for 'text'
    train_y: torch.Tensor
    val: torch.Tensor  # dense features
    val_y: torch.Tensor
    classes: int
    features: Callable[[torch.Tensor], torch.Tensor]  # rows of `train` -> dense features
    tokens: int  # the features are this many tokens of equal width, in order (a transformer's sequence)

    @property
    def dim(self) -> int:
        return self.val.shape[1]


def shuffled_digits(seed: int = 0, standardize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits in a seeded random order: (features [1797, 64] float32, labels [1797] int64).

    Features are pixel intensities / 16, in [0, 1]; with `standardize`, each of the 64 is then shifted
    and scaled over all images to (x - mean) / (std + 1e-3). The order is ``torch.randperm(1797)``
    drawn from a generator seeded with `seed`. A view ``[1797, 1, 8, 8]`` gives the images.
    """
    from sklearn.datasets import load_digits

    check_int(seed, "seed")
    digits = load_digits()
    features = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    if check_bool(standardize, "standardize"):
        features = (features - features.mean(0)) / (features.std(0) + 1e-3)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return features[order], labels[order]


def digits_split(
    train_size: int, seed: int = 0, standardize: bool = False
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train features, labels), (validation features, labels)): the first `train_size` of the
    1797 images of `shuffled_digits(seed, standardize)` train, the rest validate."""
    check_int(train_size, "train_size", minimum=1)
    if train_size >= DIGITS_IMAGES:
        raise ValueError(f"Invalid train_size: {train_size!r} (expected fewer than the {DIGITS_IMAGES} images)")
    features, labels = shuffled_digits(seed, standardize)
    return (features[:train_size], labels[:train_size]), (features[train_size:], labels[train_size:])


@functools.lru_cache(maxsize=None)
def load_digits_data() -> Data:
    (train, train_y), (val, val_y) = digits_split(DIGITS_TRAIN_IMAGES, seed=0, standardize=True)
    return Data(train, train_y, val, val_y, DIGITS_CLASSES, lambda rows: rows, tokens=8)  # a row of pixels each


def stdlib_text(chars: int = TEXT_CHARS, reverse: bool = False) -> str:
    """The first `chars` characters of the standard library's top-level modules, in name order
    (reverse name order with `reverse`)."""
    directory = Path(sysconfig.get_paths()["stdlib"])
    pieces, total = [], 0
    for path in sorted(directory.glob("*.py"), reverse=reverse):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        pieces.append(text)
        total += len(text)
        if total >= chars:
            break
    text = "".join(pieces)[:chars]
    if len(text) < chars // 4:
        raise RuntimeError(f"the standard library source under {directory} is missing (found {len(text)} characters)")
    return text


@functools.lru_cache(maxsize=None)
def load_text_data(context: int = 8, reverse: bool = False) -> Data:
    """Windows of `context` symbols -> the next one: the first 90% of the text trains, `VAL_SAMPLES`
    windows drawn from the rest validate. Symbols: the 47 most frequent characters, and one for any other."""
    text = stdlib_text(reverse=reverse)
    common = [c for c, _ in Counter(text).most_common(VOCAB - 1)]
    index = {c: i for i, c in enumerate(common)}
    ids = torch.tensor([index.get(c, VOCAB - 1) for c in text], dtype=torch.long)
    windows = ids.unfold(0, context + 1, 1)  # [N, context + 1]
    split = int(0.9 * len(windows))
    train, val = windows[:split], windows[split:]
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:VAL_SAMPLES]
    val = val[pick]

    def features(rows: torch.Tensor) -> torch.Tensor:
        return F.one_hot(rows, VOCAB).flatten(-2).float()

    return Data(train[:, :context], train[:, context], features(val[:, :context]), val[:, context], VOCAB, features,
                tokens=context)


def load_data(name: str, context: int = 8) -> Data:
    """The data set `name` ('digits', 'text' or 'text2'), cached after the first load."""
    loaders = {
        "digits": load_digits_data,
        "text": lambda: load_text_data(context),
        "text2": lambda: load_text_data(context, reverse=True),
    }
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r} (known: {', '.join(loaders)})")
    return loaders[name]()
