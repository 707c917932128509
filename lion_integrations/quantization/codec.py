"""Block-wise dynamic quantization: the codec that stores Lion's momentum in 8 or 4 bits.

Pure torch functions, written so that `torch.compile` fuses them with the update into one pass.

Layout. A tensor is seen as rows: ``rows = shape[0]`` and ``cols = numel // rows`` (the trailing
dimensions flattened; a 1-D tensor is one row). Blocks of ``block_size`` consecutive elements run
along each row and never cross a row; a row's last block is short when ``block_size`` does not
divide ``cols``. So

* codes: uint8 of the tensor's own shape for 8 bits; ``(rows, ceil(cols / 2))`` for 4 bits, two
  codes per byte: byte ``j`` of a block of ``L`` elements holds element ``j`` in its low nibble and
  element ``j + L/2`` in its high nibble (both halves are contiguous, so the packing vectorizes; a
  row's short last block of odd length is padded by one zero element; 4-bit block sizes are even,
  so a byte never holds two blocks);
* absmax: float32 ``(rows, ceil(cols / block_size))``, the largest magnitude in each block.

Row ``r`` of the tensor is encoded entirely by row ``r`` of the codes and row ``r`` of absmax, so a
split of dim 0 (FSDP2's ``Shard(0)``, a DCP reshard to another world size) cuts the tensor, its
codes and its scales at the same rows, and every piece is a complete encoding of its own rows.

Map. `signed_dynamic_map` is a signed dynamic-exponent map after Dettmers et al. (8-bit optimizers
via block-wise quantization, 2022). A code is a sign and a magnitude index ``j``:

* 8 bits, ``j`` in 0..127: decade ``t = floor(log2 j)`` (0..6) holds the ``2**t`` values
  ``10**(t-6) * (0.1 + 0.9 * k / 2**t)``, ``k = j + 1 - 2**t`` in 1..2**t, so a decade's fraction
  gets fewer values as its exponent shrinks: relative precision from 1 down to 1e-6 of the absmax;
* 4 bits, ``j`` in 0..7: 7 magnitudes spaced geometrically from 1/32 to 1 (all exponent).

``j = 0`` is zero. A stored byte (nibble) is ``j`` for a positive value and ``2**bits - 1 - j`` for
a negative one, i.e. the map index XOR ``2**(bits-1)``: a zero byte (a fresh state) decodes to 0,
and the map is symmetric and holds +1 and -1 exactly, so a block's largest element is stored
without error whatever its sign.

Both directions are arithmetic on the code or the value (float exponent bits, compares and
selects), never a table look-up: look-ups compile to scalar gathers on CPU, this vectorizes.
Decoding is exact IEEE float32 arithmetic, the same in eager and compiled code, and defines the
map. Encoding rounds to the nearest entry, deterministically, ties toward zero (exactly for 4 bits;
for 8 bits up to float32 rounding of the position inside a decade, a few 1e-8 of the absmax); or,
for 4 bits, stochastically (`stochastic_code4`, what `Lion4bit` does): to the entry below or above
with probabilities that make the expected decoded value the input, from counter-based draws
(`code_draws`: a hash of the step and the element's index, integer arithmetic that every path
computes alike).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_int

SUPPORTED_BITS = (8, 4)
CODES_DTYPE = torch.uint8
ABSMAX_DTYPE = torch.float32


def check_bits(bits) -> int:
    """`bits`, an int in SUPPORTED_BITS."""
    return check_choice(check_int(bits, "bits"), "bits", SUPPORTED_BITS)


def check_block_size(block_size, bits: int = 8) -> int:
    """`block_size`, an int >= 1, even for 4 bits."""
    block_size = check_int(block_size, "block_size", minimum=1)
    if bits == 4 and block_size % 2:
        raise ValueError(f"Invalid block_size: {block_size!r} (4-bit codes pack two per byte: use an even size)")
    return block_size


def check_min_quantized_size(min_quantized_size) -> int:
    """`min_quantized_size`, an int >= 0 (parameters with fewer elements keep full-precision momentum)."""
    return check_int(min_quantized_size, "min_quantized_size", minimum=0)


# --- 8 bits: seven decimal decades. -------------------------------------------------------------

DECADES = 7
# DECADE_SCALE[t] = 10**(t-6): the largest magnitude of decade t (and 10x the smallest of t+1).
DECADE_SCALE = tuple(10.0 ** (t - DECADES + 1) for t in range(DECADES))


def decade_encode_constants(t: int) -> tuple[float, float, float]:
    """(A, C, cap) such that a magnitude a of decade t has nearest index min(ceil(a*A - C), cap).

    Decade t >= 1 spans [0.1*s, s] (s = 10**(t-6)) in 2**t equal steps, k = 0 being the top of
    decade t-1: k = round((a/s - 0.1) * 2**t / 0.9), j = k + 2**t - 1. Decade 0 spans [0, 1e-6]
    in one step (j = 0 is zero). Rounding half down (ties toward zero) is ceil(x - 0.5).
    """
    if t == 0:
        return 1.0 / DECADE_SCALE[0], 0.5, 1.0
    steps = 2.0**t
    scale = steps / (0.9 * DECADE_SCALE[t])
    return scale, steps / 9.0 + 0.5 - (steps - 1.0), 2.0 * steps - 1.0


def _float_bits(values: torch.Tensor) -> torch.Tensor:
    return values.view(torch.int32)


def _power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2.0**exponent (float32, exact) for int32 exponents in [-126, 127], from the float's bits."""
    return ((exponent + 127) << 23).view(torch.float32)


def _decode_magnitude8(j: torch.Tensor) -> torch.Tensor:
    """Magnitude of index j (int32, 0..127), exact float32: 10**(t-6) * (0.1 + 0.9 * k / 2**t)."""
    jf = j.float()
    t = (_float_bits(jf) >> 23) - 127  # floor(log2 j); -127 for j = 0
    fraction = (jf + 1.0) * _power_of_two(-t.clamp(min=0)) - 1.0  # k / 2**t, exact
    scale = torch.full_like(jf, DECADE_SCALE[0])
    for decade in range(1, DECADES):
        scale = torch.where(t >= decade, DECADE_SCALE[decade], scale)
    return torch.where(j == 0, 0.0, (fraction * 0.9 + 0.1) * scale)


def _nearest_index8(magnitude: torch.Tensor) -> torch.Tensor:
    """Index j (int32) of the magnitude nearest to each value in [0, 1]."""
    slope, offset, cap = (torch.full_like(magnitude, value) for value in decade_encode_constants(0))
    for decade in range(1, DECADES):
        inside = magnitude > DECADE_SCALE[decade - 1]
        decade_slope, decade_offset, decade_cap = decade_encode_constants(decade)
        slope = torch.where(inside, decade_slope, slope)
        offset = torch.where(inside, decade_offset, offset)
        cap = torch.where(inside, decade_cap, cap)
    return torch.minimum(torch.ceil(magnitude * slope - offset), cap).to(torch.int32)


# --- 4 bits: seven geometric magnitudes. ----------------------------------------------------------

# With 3 magnitude bits a decimal dynamic map (0.01, 0.055, 0.1, 0.325, ...) leaves gaps so wide
# that deterministic rounding freezes Lion's 1%-per-step momentum updates; magnitudes 32**(-k/6),
# k = 6..0 (1/32 to 1, ratio ~1.78), lost least in our 200-step comparisons (tests/quantization/test_optim.py).
_FOUR_BIT_RANGE = 32.0
FOUR_BIT_MAGNITUDES = tuple(float(torch.tensor(_FOUR_BIT_RANGE ** (-k / 6))) for k in range(6, -1, -1))
# Midpoints between neighbouring magnitudes (0 first), in float32: j = how many lie below |x|.
FOUR_BIT_MIDPOINTS = tuple(
    float((torch.tensor(low) + torch.tensor(high)) / 2) for low, high in zip((0.0, *FOUR_BIT_MAGNITUDES), FOUR_BIT_MAGNITUDES)
)


def _decode_magnitude4(j: torch.Tensor) -> torch.Tensor:
    magnitude = torch.zeros_like(j, dtype=torch.float32)
    for index, value in enumerate(FOUR_BIT_MAGNITUDES, start=1):
        magnitude = torch.where(j == index, value, magnitude)
    return magnitude


def _nearest_index4(magnitude: torch.Tensor) -> torch.Tensor:
    index = torch.zeros_like(magnitude, dtype=torch.int32)
    for count, midpoint in enumerate(FOUR_BIT_MIDPOINTS, start=1):
        index = torch.where(magnitude > midpoint, count, index)
    return index


# --- 4 bits: stochastic rounding of the codes. -----------------------------------------------------

# With beta2 = 0.99 the momentum moves by 1% of (g - m) a step, mostly less than half the gap
# between neighbouring 4-bit magnitudes: rounded to nearest, it would never move. So 4-bit codes are
# rounded stochastically: |x| in [M[j], M[j+1]) becomes M[j+1] with probability
# (|x| - M[j]) / (M[j+1] - M[j]), else M[j], so E[decode(encode(x))] = x.
# FOUR_BIT_GAPS[j] = M[j+1] - M[j] in float32, M[0] = 0 and M[1..7] = FOUR_BIT_MAGNITUDES; the gap
# above M[7] = 1 is 0 (nothing rounds past 1).
FOUR_BIT_GAPS = (
    *(float(torch.tensor(high) - torch.tensor(low)) for low, high in zip((0.0, *FOUR_BIT_MAGNITUDES), FOUR_BIT_MAGNITUDES)),
    0.0,
)
# Each element's draw is DRAW_BITS uniform bits of a counter-based hash of (step, element index):
# the same in torch and in C, whatever the path, the thread count, the block order or the sharding.
DRAW_BITS = 24
UINT32_MASK = 0xFFFFFFFF
# Odd multipliers below 2**31, so that a 32-bit value times one fits an int64 (torch has no uint32).
HASH_MULTIPLIERS = (0x7FEB352D, 0x2C1B3C6D)


def mix32(x):
    """A 32-bit integer hash (xor-shift-multiply, after Wellons' lowbias32) of `x` in [0, 2**32):
    a Python int or an int64 tensor, with the same result for both."""
    first, second = HASH_MULTIPLIERS
    x = ((x ^ (x >> 16)) * first) & UINT32_MASK
    x = ((x ^ (x >> 15)) * second) & UINT32_MASK
    return x ^ (x >> 16)


def rounding_key(step: int) -> int:
    """The 32-bit key of the draws of the codes written by the `step`-th step (counted from 0)."""
    return mix32(step & UINT32_MASK)


def code_draws(rows: int, cols: int, key: int, first_index: int = 0, device=None) -> torch.Tensor:
    """Uniform int32 draws in [0, 2**DRAW_BITS) for a (rows, cols) tensor in the row layout whose
    first element has index `first_index` (a shard's offset in its whole tensor): element
    i (= first_index + row * cols + col) gets the top DRAW_BITS bits of mix32((i mod 2**32) XOR key)."""
    index = (torch.arange(rows * cols, dtype=torch.int64, device=device) + first_index) & UINT32_MASK
    return (mix32(index ^ key) >> (32 - DRAW_BITS)).to(torch.int32).view(rows, cols)


def _stochastic_index4(magnitude: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Index j or j + 1 (int32) for magnitudes in [M[j], M[j+1]): up when draw * 2**-DRAW_BITS * gap
    < |x| - M[j] (magnitudes above 1, by float rounding, count as 1; NaN gives 0)."""
    magnitude = magnitude.clamp(max=1.0)
    index = torch.zeros_like(magnitude, dtype=torch.int32)
    lower = torch.zeros_like(magnitude)
    gap = torch.full_like(magnitude, FOUR_BIT_GAPS[0])
    for count, (value, next_gap) in enumerate(zip(FOUR_BIT_MAGNITUDES, FOUR_BIT_GAPS[1:]), start=1):
        above = magnitude >= value
        index = torch.where(above, count, index)
        lower = torch.where(above, value, lower)
        gap = torch.where(above, next_gap, gap)
    up = (draws.float() * 2.0**-DRAW_BITS) * gap < magnitude - lower
    return index + up.to(torch.int32)


# --- Codes <-> normalized values. -------------------------------------------------------------


def decode_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The float32 value in [-1, 1] of each stored code (uint8 or int32, one code per element)."""
    codes = codes.to(torch.int32)
    top = (1 << bits) - 1
    negative = codes > top // 2
    j = torch.where(negative, top - codes, codes)
    magnitude = _decode_magnitude8(j) if bits == 8 else _decode_magnitude4(j)
    return torch.where(negative, -magnitude, magnitude)


def nearest_code(normalized: torch.Tensor, bits: int) -> torch.Tensor:
    """Stored code (int32) of the map entry nearest to each value in [-1, 1]."""
    magnitude = normalized.abs()
    j = _nearest_index8(magnitude) if bits == 8 else _nearest_index4(magnitude)
    return torch.where(normalized < 0, (1 << bits) - 1 - j, j)


def stochastic_code4(normalized: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Stored 4-bit code (int32) of each value in [-1, 1], rounded stochastically to one of the two
    map entries around it with `draws` (int32 in [0, 2**DRAW_BITS), `code_draws`): unbiased."""
    j = _stochastic_index4(normalized.abs(), draws)
    return torch.where(normalized < 0, 15 - j, j)


@functools.lru_cache(maxsize=None)
def _map_values(bits: int) -> tuple[float, ...]:
    half = 1 << (bits - 1)
    indices = torch.arange(1 << bits, dtype=torch.int32)
    return tuple(decode_codes(indices ^ half, bits).tolist())


def signed_dynamic_map(bits: int = 8, device: torch.device | str | None = None) -> torch.Tensor:
    """The 2**bits sorted values in [-1, 1] (float32) that map indices decode to, times the absmax;
    map index i is stored as the code i XOR 2**(bits-1)."""
    return torch.tensor(_map_values(check_bits(bits)), dtype=torch.float32, device=device)


# --- Blocks: tensors of shape (..., block length), one absmax per block (shape ...). ---------------


# Blocks whose absmax is below TINY_ABSMAX are scaled by RESCALE (exactly, a power of two) before
# they are divided by it: 1 / absmax overflows to inf below 2**-128, which would encode every nonzero
# element of the block as +-absmax.
TINY_ABSMAX = 2.0**-100
RESCALE = 2.0**64


def to_unit(values: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """`values` (..., L) divided by their block's `absmax` (...), as a product with the inverse (the
    AVX-512 kernel computes the same, bit for bit); blocks of absmax 0 stay 0."""
    rescale = torch.where(absmax < TINY_ABSMAX, RESCALE, 1.0).unsqueeze(-1)
    scaled_absmax = absmax.unsqueeze(-1) * rescale
    inverse = 1.0 / torch.where(scaled_absmax > 0, scaled_absmax, torch.ones_like(scaled_absmax))
    return (values * rescale) * inverse


def encode_nibbles(low: torch.Tensor, high: torch.Tensor, draws=None):
    """4-bit blocks given as their two halves (..., L/2): (codes uint8 (..., L/2), absmax (...)).
    `draws`: None, nearest rounding; or the halves' draws, a pair like (low, high), for `stochastic_code4`."""
    low, high = low.float(), high.float()
    absmax = torch.maximum(low.abs(), high.abs()).amax(dim=-1)
    if draws is None:
        low_codes, high_codes = nearest_code(to_unit(low, absmax), 4), nearest_code(to_unit(high, absmax), 4)
    else:
        low_codes = stochastic_code4(to_unit(low, absmax), draws[0])
        high_codes = stochastic_code4(to_unit(high, absmax), draws[1])
    return (low_codes | (high_codes << 4)).to(CODES_DTYPE), absmax


def decode_nibbles(codes: torch.Tensor, absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two float32 halves (..., L/2) of the 4-bit blocks that `codes` (..., L/2) and `absmax` encode."""
    scale = absmax.unsqueeze(-1)
    return decode_codes(codes & 15, 4) * scale, decode_codes(codes >> 4, 4) * scale


def encode_blocks(values: torch.Tensor, bits: int, draws: torch.Tensor | None = None):
    """Quantize `values` (..., L), one block per last-dim slice: (codes uint8 (..., L or L/2), absmax).
    `draws` (4 bits only): None, nearest rounding; or int32 like `values` (`code_draws`), stochastic."""
    if bits == 4:
        return encode_nibbles(*values.chunk(2, dim=-1), draws=draws.chunk(2, dim=-1) if draws is not None else None)
    if draws is not None:
        raise ValueError(f"Invalid draws for bits={bits}: only 4-bit codes are rounded stochastically")
    values = values.float()
    absmax = values.abs().amax(dim=-1)
    return nearest_code(to_unit(values, absmax), bits).to(CODES_DTYPE), absmax


def decode_blocks(codes: torch.Tensor, absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """The float32 blocks (..., L) that `codes` (..., L, or L/2 for 4 bits) and `absmax` (...) encode."""
    if bits == 4:  # byte j of a block -> elements j (low nibble) and j + L/2 (high nibble)
        return torch.cat(decode_nibbles(codes, absmax), dim=-1)
    return decode_codes(codes, bits) * absmax.unsqueeze(-1)


# --- Rows: the tensor layout described in the module docstring. ---------------------------------


def contiguous_strides(shape) -> tuple[int, ...]:
    """The strides of a contiguous tensor of `shape`, as torch computes them (a size-0 dim counts as 1)."""
    stride, strides = 1, []
    for size in reversed(tuple(shape)):
        strides.insert(0, stride)
        stride *= max(size, 1)
    return tuple(strides)


def rows_and_cols(shape) -> tuple[int, int]:
    """How the codec views a tensor of `shape`: (shape[0], product of the other dims); 1-D is one row."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def quantized_shapes(shape, bits: int, block_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(codes shape, absmax shape) for a tensor of `shape` in the row layout."""
    rows, cols = rows_and_cols(shape)
    if bits == 8:
        codes = tuple(shape) if len(shape) >= 2 else (rows, cols)
    else:
        codes = (rows, (cols + 1) // 2)
    return codes, (rows, -(-cols // block_size))


def block_views(values, codes, absmax, bits: int, block_size: int):
    """Split row-layout 2-D views into block views: [(values, codes, absmax)] for the full blocks
    and, when block_size does not divide cols, for each row's short last block.

    Full blocks are (rows * n, block_size) when they tile the rows exactly, else (rows, n, block_size);
    last blocks are (rows, t). All are views of the inputs (no copy); callers skip empty parts.
    """
    rows, cols = values.shape
    full, tail = divmod(cols, block_size)
    per_byte = 2 if bits == 4 else 1
    split = full * block_size
    if not tail:  # one block per leading index: the compiled loops fuse per block
        return [(values.view(rows * full, block_size), codes.view(rows * full, -1), absmax.view(rows * full))]
    return [
        (
            values[:, :split].view(rows, full, block_size),
            codes[:, : split // per_byte].view(rows, full, block_size // per_byte),
            absmax[:, :full],
        ),
        (values[:, split:], codes[:, split // per_byte :], absmax[:, full]),
    ]


def padded_to_whole_bytes(values: torch.Tensor) -> torch.Tensor:
    """A 4-bit block of odd length padded with one zero element (its code's unused high nibble)."""
    return F.pad(values, (0, values.shape[-1] % 2))


def quantize_blockwise(values: torch.Tensor, bits: int = 8, block_size: int = 256):
    """Quantize `values` (any shape, in the row layout): returns (codes uint8, absmax float32)."""
    check_bits(bits), check_block_size(block_size, bits)
    rows, cols = rows_and_cols(values.shape)
    codes_shape, absmax_shape = quantized_shapes(values.shape, bits, block_size)
    codes = torch.zeros(codes_shape, dtype=CODES_DTYPE, device=values.device)
    absmax = torch.zeros(absmax_shape, dtype=ABSMAX_DTYPE, device=values.device)
    flat = values.detach().reshape(rows, cols)
    for part_values, part_codes, part_absmax in block_views(flat, codes.view(rows, -1), absmax, bits, block_size):
        if part_values.numel():
            if bits == 4:
                part_values = padded_to_whole_bytes(part_values)
            new_codes, new_absmax = encode_blocks(part_values, bits)
            part_codes.copy_(new_codes)
            part_absmax.copy_(new_absmax)
    return codes, absmax


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, shape, bits: int = 8, block_size: int = 256):
    """The float32 tensor of `shape` that `codes` and `absmax` encode (inverse of `quantize_blockwise`)."""
    check_bits(bits), check_block_size(block_size, bits)
    codes_shape, absmax_shape = quantized_shapes(shape, bits, block_size)
    if tuple(codes.shape) != codes_shape or tuple(absmax.shape) != absmax_shape:
        raise ValueError(
            f"Invalid quantized state: codes {tuple(codes.shape)} and absmax {tuple(absmax.shape)} do not "
            f"encode shape {tuple(shape)} with bits={bits}, block_size={block_size} "
            f"(expected codes {codes_shape} and absmax {absmax_shape})"
        )
    rows, cols = rows_and_cols(shape)
    values = torch.empty((rows, cols), dtype=torch.float32, device=codes.device)
    codes_rows = codes.reshape(rows, -1)
    for part_values, part_codes, part_absmax in block_views(values, codes_rows, absmax.float(), bits, block_size):
        if part_values.numel():
            decoded = decode_blocks(part_codes, part_absmax, bits)
            part_values.copy_(decoded[..., : part_values.shape[-1]])
    return values.view(tuple(shape))


def max_abs_error(absmax: torch.Tensor, bits: int, stochastic: bool | None = None) -> torch.Tensor:
    """Worst-case |x - decode(encode(x))| in each block, times absmax: half the widest gap of the map
    when rounding to nearest, the widest gap when rounding stochastically (`stochastic`; None: as
    the optimizers store momentum, stochastically for 4 bits, to nearest for 8)."""
    if stochastic is None:
        stochastic = bits == 4
    qmap = signed_dynamic_map(bits, absmax.device)
    return (qmap[1:] - qmap[:-1]).max() / (1 if stochastic else 2) * absmax
