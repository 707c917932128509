"""recipes/hf_finetune.py: a tiny GPT-2 fine-tuned with Lion and AdamW, compared in one table."""

from __future__ import annotations

import math
import runpy

import pytest
import torch

from lion_integrations import Lion
from recipes.common import weight_stores

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


def test_hf_finetune_recipe_trains_in_pure_bf16_with_kahan_summation(tmp_path, capsys):
    recipe = runpy.run_path(str(REPO / "recipes" / "hf_finetune.py"), run_name="recipe")
    rows = recipe["main"]([
        "--output_dir", str(tmp_path), "--max_steps", "4", "--logging_steps", "2", "--block_size", "16",
        "--n_embd", "16", "--max_train_blocks", "64", "--max_eval_blocks", "8", "--optim_args", "fused=false",
        "--dtype", "bfloat16",
    ])
    lion, adamw = rows
    # Every weight is bf16; Lion steps them with Kahan summation and keeps the buffer in its state,
    # AdamW rounds each new weight to nearest.
    assert lion["weights"] == ["bfloat16 kahan"] and lion["state_keys"] == ["exp_avg", "kahan_comp"]
    assert adamw["weights"] == ["bfloat16 nearest"] and "kahan_comp" not in adamw["state_keys"]
    assert all(math.isfinite(row["eval_loss"]) and math.isfinite(row["train_loss"]) for row in rows)
    output = capsys.readouterr().out
    assert "\nlion " in output and "bfloat16 kahan" in output and "\nkahan: Kahan summation" in output


def test_weight_stores_names_each_dtype_and_store():
    bf16 = [torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16)) for _ in range(3)]
    fp32 = torch.nn.Parameter(torch.zeros(4))
    optimizer = Lion([
        {"params": [bf16[0]], "stochastic_rounding": True}, {"params": [fp32, bf16[1]]},
        {"params": [bf16[2]], "kahan_sum": False},
    ])
    assert weight_stores(optimizer) == ["bfloat16 stochastic", "float32", "bfloat16 kahan", "bfloat16 nearest"]
    assert weight_stores(torch.optim.AdamW([fp32, bf16[0]])) == ["float32", "bfloat16 nearest"]
