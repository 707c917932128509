"""Cautious masking (``cautious=True``): Lion against a hand-computed step on every path, the paths
agreeing, the step size, input checks, old state dicts, the adapters' ways of asking for it, and the
whole parameter's kept fraction under FSDP2. The quantized variants: tests/quantization/test_cautious.py."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lion_integrations import Lion, Lion8bit
from lion_integrations.rule import cautious_step_size
from tests.helpers import WORKERS
from tests.helpers.cautious import check_hand_computed_steps, run_cautious

pytestmark = pytest.mark.usefixtures("fuse_small_tensors")
# Lion's fused path compiles the cautious kernel with Inductor: half a minute on 2 cores.
COMPILING = pytest.param("fused", marks=pytest.mark.slow)


@pytest.mark.parametrize("path", ["for-loop", "foreach", COMPILING])
def test_two_steps_match_hand_computation(path):
    check_hand_computed_steps(Lion, path)


@pytest.mark.parametrize("path", ["foreach", COMPILING])
def test_lion_paths_agree(path):
    reference, _ = run_cautious(Lion, "for-loop")
    for expected, actual in zip(reference, run_cautious(Lion, path)[0]):
        torch.testing.assert_close(actual, expected)
    uncautious, _ = run_cautious(Lion, "for-loop", cautious=False)
    assert not torch.equal(uncautious[0], reference[0])


def test_step_size_divides_by_the_kept_fraction_down_to_the_paper_clamp():
    assert cautious_step_size(0.1, 3, 4) == pytest.approx(0.4 / 3)
    assert cautious_step_size(0.1, 0, 10_000) == pytest.approx(100.0)  # kept fraction clamped at 1e-3
    assert cautious_step_size(0.1, 0, 0) == 0.1


def test_bad_cautious_is_a_type_error():
    with pytest.raises(TypeError, match="Invalid cautious: 1"):
        Lion([nn.Parameter(torch.zeros(2))], cautious=1)
    with pytest.raises(TypeError, match="Invalid cautious: 'true'"):
        Lion8bit([nn.Parameter(torch.zeros(2))], cautious="true")


def test_old_state_dicts_load_as_not_cautious():
    param = nn.Parameter(torch.zeros(3))
    optimizer = Lion([param], fused=False)
    state = optimizer.state_dict()
    del state["param_groups"][0]["cautious"]
    optimizer.load_state_dict(state)
    assert optimizer.param_groups[0]["cautious"] is False


def test_hugging_face_optim_args_and_lightning_kwargs_turn_it_on():
    pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    from transformers import TrainingArguments

    from lion_integrations.hf import lion_cls_and_kwargs, parse_optim_args
    from lion_integrations.lightning import configure_lion

    args = TrainingArguments(output_dir="unused", learning_rate=1e-4, report_to=[])
    for name in ("lion", "lion_q8", "lion_q4", "lion_vote"):
        _, kwargs = lion_cls_and_kwargs(name, args, parse_optim_args("cautious=true"))
        assert kwargs["cautious"] is True
    with pytest.raises(ValueError, match="expected true or false"):
        lion_cls_and_kwargs("lion", args, parse_optim_args("cautious=1"))
    module = nn.Linear(3, 2)
    assert configure_lion(module, cautious=True)["optimizer"].param_groups[0]["cautious"] is True


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_shards_count_the_whole_parameter(torchrun, tmp_path):
    """Under FSDP2 (2 ranks) the kept fraction is the whole parameter's: Lion and Lion8bit with
    cautious=True equal an unsharded replica bit for bit, although each shard keeps another fraction."""
    torchrun(WORKERS / "cautious_fsdp.py", tmp_path / "report.json", nproc=2)
    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("Lion", "Lion8bit"):
        assert report[name]["max_diff_vs_replica"] == 0.0, report
        assert report[name]["shard_fractions_differ"], report
    assert report["Lion8bit"]["quantized"]
