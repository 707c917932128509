"""recipes/demo.py (`make demo`): Lion, Lion8bit and AdamW side by side, quality, memory and step time."""

from __future__ import annotations

import math
import runpy

import pytest

from tests.helpers import REPO

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def demo():
    return runpy.run_path(str(REPO / "recipes" / "demo.py"), run_name="demo")


def test_lr_grids_are_the_same_budget_around_each_starting_lr(demo):
    factors = demo["factors"]("1/3,1,3")
    assert factors == pytest.approx([1 / 3, 1, 3])
    assert demo["lr_grid"]("AdamW", 3e-3, factors) == pytest.approx([1e-3, 3e-3, 9e-3])
    # Lion's starting lr is from_adamw's translation, lr / 3.
    assert demo["lr_grid"]("Lion", 3e-3, factors) == pytest.approx([1e-3 / 3, 1e-3, 3e-3])
    assert demo["lr_grid"]("Lion8bit", 3e-3, factors) == demo["lr_grid"]("Lion", 3e-3, factors)


def test_demo_prints_quality_state_peak_memory_and_step_time_for_each(demo, capsys):
    rows = demo["main"](["--steps", "4", "--batch_size", "4", "--block_size", "16", "--lr_factors", "1,2"])
    out = capsys.readouterr().out
    by_name = {row["name"]: row for row in rows}
    assert list(by_name) == ["AdamW", "Lion", "Lion8bit"]
    assert by_name["AdamW"]["state_bytes"] == pytest.approx(8.0, abs=0.01)  # exp_avg, exp_avg_sq (+ a step count)
    assert by_name["Lion"]["state_bytes"] == 4.0
    assert 1.0 < by_name["Lion8bit"]["state_bytes"] < 2.0  # codes and scales; the smallest tensors stay fp32
    parameters = 4 * sum(p.numel() for p in rows[0]["model"].parameters())
    for row in rows:
        # The peak holds at least the weights, gradients and optimizer state of the model.
        assert row["peak_bytes"] >= parameters * 2 + row["state_bytes"] * parameters / 4
        assert math.isfinite(row["test_loss"]) and row["lr"] in (demo["lr_grid"](row["name"], 3e-3, [1.0, 2.0]))
        assert row["step_ratio"] > 0 and row["optimizer_step_ratio"] > 0
    assert by_name["AdamW"]["step_ratio"] == 1.0 and by_name["AdamW"]["optimizer_step_ratio"] == 1.0
    for title in ("test loss", "state B/param", "peak MiB", "step / AdamW", "opt step / AdamW"):
        assert title in out
    assert "\nLion8bit" in out and "of AdamW's" in out
