"""The block-wise codec (lion_integrations.quantization.codec): its maps, round trips within the
stated bound, independent blocks and rows, nearest-code search, and shape checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lion_integrations.quantization import codec
from lion_integrations.quantization.codec import dequantize_blockwise, quantize_blockwise, quantized_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nearest_reference(normalized: torch.Tensor, bits: int) -> torch.Tensor:
    """Brute force: the distance from each value to its nearest map entry."""
    qmap = codec.signed_dynamic_map(bits).double()
    return (normalized.double().reshape(-1, 1) - qmap).abs().min(dim=1).values.reshape(normalized.shape)


@pytest.mark.parametrize("bits", [8, 4])
def test_maps_are_symmetric_sorted_with_exact_unit_and_zero(bits):
    qmap = codec.signed_dynamic_map(bits)
    assert qmap.shape == (2**bits,)
    assert torch.all(qmap[1:] >= qmap[:-1])
    assert torch.equal(qmap, -qmap.flip(0))
    assert qmap[0] == -1 and qmap[-1] == 1 and (qmap == 0).sum() == 2
    # A zero byte (a fresh state) decodes to zero; code i XOR 2**(bits-1) decodes to map entry i.
    indices = torch.arange(2**bits, dtype=torch.int32)
    assert codec.decode_codes(torch.zeros(1, dtype=torch.uint8), bits).item() == 0
    assert torch.equal(codec.decode_codes(indices ^ 2 ** (bits - 1), bits), qmap)


def test_8bit_map_is_the_dynamic_decimal_map():
    """Decade t of the magnitudes holds 10**(t-6) * (0.1 + 0.9 * k / 2**t), k = 1..2**t."""
    expected = sorted(10.0 ** (t - 6) * (0.1 + 0.9 * k / 2**t) for t in range(7) for k in range(1, 2**t + 1))
    magnitudes = codec.signed_dynamic_map(8)[129:].double()
    torch.testing.assert_close(magnitudes, torch.tensor(expected, dtype=torch.float64), rtol=2e-7, atol=0)


def test_4bit_map_is_geometric():
    magnitudes = codec.signed_dynamic_map(4)[9:].double()
    torch.testing.assert_close(magnitudes, 32.0 ** (-torch.arange(6, -1, -1, dtype=torch.float64) / 6), rtol=1e-7, atol=0)


def rows_strategy(bits):
    """(values, block_size): 2-D tensors of odd and even sizes, scales from 1e-30 to 1e30, zeros."""
    block = st.sampled_from([2, 4, 6, 8, 64, 256] if bits == 4 else [1, 3, 7, 8, 64, 256])

    @st.composite
    def build(draw):
        rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 600))
        seed = draw(st.integers(0, 2**31 - 1))
        scale = 10.0 ** draw(st.sampled_from([-30, -6, -2, 0, 3, 30]))
        generator = torch.Generator().manual_seed(seed)
        values = torch.randn(rows, cols, generator=generator) * scale
        kind = draw(st.sampled_from(["normal", "zeros", "sparse", "wide"]))
        if kind == "zeros":
            values.zero_()
        elif kind == "sparse":
            values[torch.rand(rows, cols, generator=generator) < 0.9] = 0
        elif kind == "wide":  # magnitudes over many decades inside one block
            values *= 10.0 ** torch.randint(-8, 1, (rows, cols), generator=generator)
        return values, draw(block)

    return build()


@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_is_nearest_and_within_bound(bits):
    @HYPOTHESIS
    @given(rows_strategy(bits))
    def check(case):
        values, block_size = case
        codes, absmax = quantize_blockwise(values, bits, block_size)
        codes_shape, absmax_shape = quantized_shapes(values.shape, bits, block_size)
        assert codes.dtype == torch.uint8 and tuple(codes.shape) == codes_shape
        assert absmax.dtype == torch.float32 and tuple(absmax.shape) == absmax_shape
        decoded = dequantize_blockwise(codes, absmax, values.shape, bits, block_size)
        rows, cols = values.shape
        # absmax is the exact largest magnitude of each block (a short last block included).
        blocks = torch.nn.functional.pad(values.abs(), (0, absmax.shape[1] * block_size - cols))
        assert torch.equal(absmax, blocks.view(rows, -1, block_size).amax(-1))
        scale = absmax.repeat_interleave(block_size, dim=1)[:, :cols]
        error = (decoded - values).abs()
        # Within half the widest gap of the map, and the nearest entry up to fp32 rounding.
        assert torch.all(error <= codec.max_abs_error(scale, bits, stochastic=False) * (1 + 1e-5))
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        nearest = nearest_reference(values / safe, bits) * safe
        assert torch.all(error <= nearest * (1 + 1e-5) + scale * 1e-6)
        # Zeros stay exactly zero; each block's largest element is exact whatever its sign.
        assert torch.all(decoded[values == 0] == 0)
        largest = values.abs() == scale
        assert torch.equal(decoded[largest], values[largest])

    check()


@pytest.mark.parametrize("bits", [8, 4])
def test_blocks_are_independent_and_rows_encode_themselves(bits):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(6, 300, generator=generator)
    codes, absmax = quantize_blockwise(values, bits, 64)
    changed = values.clone()
    changed[2, 130] = 1e6  # block 2 of row 2
    codes2, absmax2 = quantize_blockwise(changed, bits, 64)
    differs = (absmax != absmax2).nonzero().tolist()
    assert differs == [[2, 2]]
    per_byte = 2 if bits == 4 else 1
    mask = torch.ones_like(codes, dtype=torch.bool)
    mask[2, 128 // per_byte : 192 // per_byte] = False
    assert torch.equal(codes[mask], codes2[mask])
    # Any split of dim 0 encodes each piece exactly as the whole (what FSDP2 shards and DCP reshards).
    top_codes, top_absmax = quantize_blockwise(values[:4], bits, 64)
    assert torch.equal(top_codes, codes[:4]) and torch.equal(top_absmax, absmax[:4])


@pytest.mark.parametrize("bits", [8, 4])
def test_negation_mirrors_codes(bits):
    values = torch.randn(3, 257, generator=torch.Generator().manual_seed(1))
    codes, absmax = quantize_blockwise(values, bits, 32)
    neg_codes, neg_absmax = quantize_blockwise(-values, bits, 32)
    assert torch.equal(absmax, neg_absmax)
    assert torch.equal(
        dequantize_blockwise(neg_codes, neg_absmax, values.shape, bits, 32),
        -dequantize_blockwise(codes, absmax, values.shape, bits, 32),
    )


# Encoding finds the nearest entry up to float32 rounding of a value's position between two entries
# (4 bits: float32 midpoints; 8 bits: the position inside a decade): at most 2**-22 of the absmax.
NEAREST_SLACK = 2.0**-22


@given(st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=200))
@HYPOTHESIS
def test_nearest_code_matches_brute_force_on_arbitrary_values(values):
    x = torch.tensor(values, dtype=torch.float32)
    for bits in (8, 4):
        decoded = codec.decode_codes(codec.nearest_code(x, bits), bits)
        assert torch.all((decoded - x).abs().double() <= nearest_reference(x, bits) + NEAREST_SLACK)


@pytest.mark.parametrize("bits", [8, 4])
def test_nearest_code_at_and_around_every_midpoint(bits):
    """The hardest inputs: each midpoint between neighbouring entries and the 4 floats on either side."""
    qmap = codec.signed_dynamic_map(bits)
    midpoints = (qmap[1:] + qmap[:-1]) / 2
    inputs, up, down = [midpoints], midpoints.clone(), midpoints.clone()
    for _ in range(4):
        up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-2.0))
        inputs += [up, down]
    x = torch.cat(inputs).clamp(-1, 1)
    decoded = codec.decode_codes(codec.nearest_code(x, bits), bits)
    assert torch.all((decoded - x).abs().double() <= nearest_reference(x, bits) + NEAREST_SLACK)
    # A value well inside a gap (a quarter gap from an entry) always finds that entry.
    gaps = qmap[1:] - qmap[:-1]
    for near, offset in ((qmap[:-1], gaps / 4), (qmap[1:], -gaps / 4)):
        assert torch.equal(codec.decode_codes(codec.nearest_code(near + offset, bits), bits), near)


def test_dequantize_rejects_mismatched_shapes():
    codes, absmax = quantize_blockwise(torch.randn(4, 100), 8, 32)
    with pytest.raises(ValueError, match=r"do not encode shape \(4, 101\)"):
        dequantize_blockwise(codes, absmax, (4, 101), 8, 32)
    with pytest.raises(ValueError, match="Invalid block_size: 3"):
        quantize_blockwise(torch.randn(4, 100), 4, 3)
    with pytest.raises(ValueError, match="Invalid bits: 6"):
        quantize_blockwise(torch.randn(4, 100), 6, 32)


@pytest.mark.parametrize("bits", [8, 4])
def test_blocks_below_the_smallest_normal_float_keep_the_error_bound(bits):
    # 1 / absmax overflows to inf below 2**-128: each element must still decode near itself, not as +-absmax.
    values = torch.tensor([[2.35e-39, 8.35e-40, -4.0e-40, 0.0, 1.0e-45, -2.35e-39]])
    codes, absmax = quantize_blockwise(values, bits, 6)
    decoded = dequantize_blockwise(codes, absmax, values.shape, bits, 6)
    bound = codec.max_abs_error(absmax.repeat_interleave(6, dim=1), bits, stochastic=False) * (1 + 1e-5) + 2.0**-149
    assert torch.all((decoded - values).abs() <= bound)
