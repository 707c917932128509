"""The sign vote's ballots (lion_integrations.vote.ballots): bit packing and counting, the wire
format each world size gets, and the vote from the ballots' sums."""

from __future__ import annotations

import pytest
import torch

from lion_integrations.vote import choose_collective
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
