"""The sign-vote mode in one process: bit packing and counting, the wire-format choice, the vote
itself, SignVoteLion without a process group (it is Lion), input checks and state dicts. Across
processes: tests/test_vote_distributed.py."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lion_integrations import Lion
from lion_integrations.vote import SignVoteLion, choose_collective, skip_gradient_allreduce
from lion_integrations.vote.ballots import (
    bytes_sent_per_element,
    count_set_bits,
    pack_bits,
    padded_length,
    sum_dtype,
)
from lion_integrations.vote.optimizer import voted_direction


@pytest.mark.parametrize("ranks, count", [(3, 1), (3, 7), (3, 64), (3, 1001), (255, 70), (300, 9)])
def test_packed_bits_count_back_per_element(ranks, count):
    generator = torch.Generator().manual_seed(count)
    rows = torch.rand(ranks, count, generator=generator) > 0.5
    padded = torch.zeros(ranks, padded_length(count), dtype=torch.bool)
    padded[:, :count] = rows
    packed = torch.stack([pack_bits(row) for row in padded])
    assert packed.dtype == torch.uint8 and packed.shape == (ranks, padded_length(count) // 8)
    # bit i % 8 of byte i // 8 is element i
    assert [(packed[0, i // 8].item() >> (i % 8)) & 1 for i in range(count)] == rows[0].int().tolist()
    assert count_set_bits(packed, count).tolist() == rows.sum(dim=0).tolist()


def test_wire_format_is_the_cheaper_one_at_each_world_size():
    # Per element, a rank sends (W-1)/8 bytes in the packed all-gather, 2(W-1)/W in an int8 all-reduce.
    assert bytes_sent_per_element("all_gather", 2) == 1 / 8
    assert bytes_sent_per_element("all_reduce", 4) == 1.5
    assert [choose_collective(w) for w in (2, 4, 8, 16, 17, 64)] == ["all_gather"] * 4 + ["all_reduce"] * 2
    # With zeros expected (cautious), the all-gather sends two bits per element.
    assert [choose_collective(w, expect_zeros=True) for w in (2, 8, 9)] == ["all_gather"] * 2 + ["all_reduce"]
    assert choose_collective(2, collective="all_reduce") == "all_reduce"
    assert [sum_dtype(w) for w in (2, 127, 128, 40000)] == [torch.int8, torch.int8, torch.int16, torch.int32]
    with pytest.raises(ValueError, match="Invalid collective: 'broadcast'"):
        choose_collective(2, collective="broadcast")


def test_majority_breaks_ties_to_zero_and_average_divides_by_the_voters():
    sums = torch.tensor([3, -1, 0, 2, -4], dtype=torch.float32)
    assert voted_direction(sums.clone(), 4, "majority").tolist() == [1.0, -1.0, 0.0, 1.0, -1.0]
    assert voted_direction(sums.clone(), 4, "average").tolist() == [0.75, -0.25, 0.0, 0.5, -1.0]


def make_params(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(7, 5), (13,), ()]]


@pytest.mark.parametrize("options", [{}, {"cautious": True}, {"maximize": True, "vote": "average"}])
def test_one_process_is_lion_bit_for_bit(options):
    expected, actual = make_params(), make_params()
    lion_options = {k: v for k, v in options.items() if k != "vote"}
    lion = Lion(expected, lr=0.05, weight_decay=0.3, fused=False, foreach=False, **lion_options)
    vote = SignVoteLion(actual, lr=0.05, weight_decay=0.3, **options)
    generator = torch.Generator().manual_seed(1)
    for step in range(20):
        for p, q in zip(expected, actual):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = None if (step % 3 == 1 and q.dim() == 0) else p.grad.clone()
            if q.grad is None:
                p.grad = None
        lion.step()
        vote.step()
    for p, q in zip(expected, actual):
        assert torch.equal(p, q)
        assert torch.equal(lion.state[p]["exp_avg"], vote.state[q]["exp_avg"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"vote": "minority"}, ValueError, "Invalid vote: 'minority'"),
        ({"collective": "ring"}, ValueError, "Invalid collective: 'ring'"),
        ({"cautious": "yes"}, TypeError, "Invalid cautious: 'yes'"),
        ({"skip_ddp_allreduce": 1}, TypeError, "Invalid skip_ddp_allreduce: 1"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        SignVoteLion(make_params(), **kwargs)


def test_skip_gradient_allreduce_needs_the_ddp_wrapper():
    with pytest.raises(ValueError, match="Invalid model: Linear"):
        skip_gradient_allreduce(nn.Linear(2, 2))


def test_state_dict_names_the_rank_and_loads_lion_state():
    params = make_params()
    optimizer = SignVoteLion(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = optimizer.state_dict()
    assert state["vote"] == {"rank": 0, "world_size": 1}
    lion = Lion(make_params(), lr=0.1, fused=False)
    restored = SignVoteLion(make_params(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one process: nothing to warn about
        restored.load_state_dict(state)
        restored.load_state_dict(lion.state_dict())
    lion.load_state_dict(state)  # and Lion loads ours
