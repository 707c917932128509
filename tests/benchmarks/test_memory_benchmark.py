"""benchmarks/memory.py: training-step peak memory per optimizer, and the largest GPT-2 width that fits."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
sys.path.insert(0, str(REPO / "benchmarks"))
import memory  # noqa: E402


@pytest.mark.parametrize(("width", "layers"), [(768, 12), (128, 2), (320, 3)])
def test_parameter_count_formula_matches_the_model(width, layers):
    model = memory.gpt2(width, layers, "meta")
    assert memory.gpt2_parameters(width, layers) == sum(p.numel() for p in model.parameters())
    assert memory.gpt2_parameters(768) == 124_439_808  # GPT-2 small


def test_largest_width_is_the_widest_that_fits():
    bytes_per_param = 16.0
    width = memory.largest_width(8e9, bytes_per_param)
    assert width % 64 == 0
    assert memory.gpt2_parameters(width) * bytes_per_param <= 8e9 < memory.gpt2_parameters(width + 64) * bytes_per_param
    assert memory.largest_width(1e3, bytes_per_param) is None
    assert memory.largest_width(8e9, 8.0) > width  # half the bytes: a wider model


@pytest.mark.slow
def test_memory_benchmark_measures_every_optimizer_and_writes_table_and_plot(tmp_path):
    results = memory.main(["--width", "64", "--layers", "1", "--batch", "1", "--seq-len", "16",
                           "--memory-gb", "8", "--output-dir", str(tmp_path)])
    adamw, lion, lion8 = results["AdamW (torch, fused)"], results["Lion"], results["Lion8bit"]
    assert (adamw["weights"], adamw["gradients"], adamw["state"]) == (4, 4, pytest.approx(8.0, abs=0.01))
    assert lion["state"] == 4.0 and lion8["state"] < 1.5
    # Weights + gradients + state are live during the step; the whole step adds activations.
    for result in (adamw, lion, lion8):
        assert result["without_activations"] >= 8 + result["state"] - 1e-6
        assert result["whole_step"] >= result["without_activations"] * result["parameters"]
    assert results["Lion, bf16 weights and momentum"]["weights"] == 2
    table = (tmp_path / "memory.md").read_text()
    assert "| Lion8bit |" in table and "largest in 8 GB" in table and "profiler" in table
    assert (tmp_path / "memory.png").read_bytes().startswith(b"\x89PNG")
