"""recipes/hf_finetune.py: a tiny GPT-2 fine-tuned with Lion and AdamW, compared in one table."""

from __future__ import annotations

import math
import runpy

import pytest

transformers = pytest.importorskip("transformers")

from tests.helpers import REPO  # noqa: E402


def test_hf_finetune_recipe_compares_lion_and_adamw(tmp_path, capsys):
    recipe = runpy.run_path(str(REPO / "recipes" / "hf_finetune.py"), run_name="recipe")
    rows = recipe["main"]([
        "--output_dir", str(tmp_path), "--max_steps", "6", "--logging_steps", "3", "--block_size", "16",
        "--n_embd", "16", "--max_train_blocks", "64", "--max_eval_blocks", "8", "--optim_args", "fused=false",
    ])
    lion, adamw = rows
    assert (lion["optim"], lion["class"], adamw["optim"], adamw["class"]) == ("lion", "Lion", "adamw_torch", "AdamW")
    # --learning_rate/--weight_decay are the AdamW setting; Lion's come from from_adamw (ratio 3).
    assert adamw["lr"] == 3e-3 and adamw["weight_decay"] == 0.1
    assert lion["lr"] == pytest.approx(1e-3) and lion["weight_decay"] == pytest.approx(0.3)
    assert all(math.isfinite(row["eval_loss"]) and math.isfinite(row["train_loss"]) for row in rows)
    table = capsys.readouterr().out
    assert "eval loss" in table and "\nlion " in table and "\nadamw_torch " in table
