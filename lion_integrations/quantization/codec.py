"""Block-wise dynamic quantization: the codec that stores Lion's momentum in 8 or 4 bits.

Pure torch functions, written so that `torch.compile` fuses them with the update into one pass.

Layout. A tensor is seen as rows: ``rows = shape[0]`` and ``cols = numel // rows`` (the trailing
dimensions flattened; a 1-D tensor is one row). Blocks of ``block_size`` consecutive elements run
along each row and never cross a row; a row's last block is short when ``block_size`` does not
divide ``cols``. So

* codes: uint8 of the tensor's own shape for 8 bits; ``(rows, ceil(cols / 2))`` for 4 bits, two
  codes per byte (element ``2j`` in the low nibble, ``2j + 1`` in the high nibble of byte ``j``;
  4-bit block sizes are even, so a byte never holds two blocks);
* absmax: float32 ``(rows, ceil(cols / block_size))``, the largest magnitude in each block.

Row ``r`` of the tensor is encoded entirely by row ``r`` of the codes and row ``r`` of absmax, so a
split of dim 0 (FSDP2's ``Shard(0)``, a DCP reshard to another world size) cuts the tensor, its
codes and its scales at the same rows, and every piece is a complete encoding of its own rows.

Map. `signed_dynamic_map` is a signed dynamic-exponent map after Dettmers et al. (8-bit optimizers
via block-wise quantization, 2022). 8 bits: a sign, and a magnitude whose decade shrinks as its
fraction gets more values, keeping relative precision from 1 down to 1e-6 of the block's absmax.
4 bits: a sign and 7 magnitudes spaced geometrically from 1/32 to 1 (all exponent, no fraction).
Both are symmetric (``map[i] == -map[-1 - i]``) and hold +1 and -1 exactly, so a block's largest
element is stored without error whatever its sign; their two middle entries are 0.
A stored byte is the map index XOR ``2**(bits-1)``, so a zero byte (a fresh state) decodes to 0.

Rounding is to the nearest map entry, deterministic (ties toward zero): the value divided by its
block's absmax is located among the midpoints between neighbouring entries by one look-up on its
float32 exponent and top mantissa bits and one comparison (`nearest_byte`); a sort-based search
(``torch.bucketize``) gives the same index but Inductor does not fuse it on CPU.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

SUPPORTED_BITS = (8, 4)
CODES_DTYPE = torch.uint8
ABSMAX_DTYPE = torch.float32


def check_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"Invalid bits: {bits!r} (supported: {', '.join(map(str, SUPPORTED_BITS))})")
    return int(bits)


def check_block_size(block_size, bits: int = 8) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"Invalid block_size: {block_size!r} (must be an int >= 1)")
    if bits == 4 and block_size % 2:
        raise ValueError(f"Invalid block_size: {block_size!r} (4-bit codes pack two per byte: use an even size)")
    return block_size


# 4 bits: the map is all exponent: magnitudes 32**(-k/6), k = 6..0 (1/32 to 1, ratio ~1.78). With 3
# magnitude bits a decimal dynamic map (0.01, 0.055, 0.1, 0.325, ...) leaves gaps so wide that
# deterministic rounding freezes Lion's 1%-per-step momentum updates; this spacing lost least in
# our 200-step comparisons (tests/test_quantization.py).
_FOUR_BIT_RANGE = 32.0


@functools.lru_cache(maxsize=None)
def _dynamic_map_values(bits: int) -> tuple[float, ...]:
    magnitude_bits = check_bits(bits) - 1
    magnitudes = []
    if bits == 4:
        count = 2**magnitude_bits - 1
        magnitudes = [_FOUR_BIT_RANGE ** (-k / (count - 1)) for k in range(count)]
    else:
        # Decade 10**-e holds 2**(magnitude_bits - 1 - e) evenly spaced values of (0.1, 1] * 10**-e.
        for e in range(magnitude_bits):
            count = 2 ** (magnitude_bits - 1 - e)
            magnitudes += [10.0**-e * (0.1 + 0.9 * k / count) for k in range(1, count + 1)]
    magnitudes.sort()
    return tuple([-m for m in reversed(magnitudes)] + [0.0, 0.0] + magnitudes)


def signed_dynamic_map(bits: int = 8, device: torch.device | str | None = None) -> torch.Tensor:
    """The 2**bits sorted values in [-1, 1] (float32) that map indices decode to, times the absmax."""
    return torch.tensor(_dynamic_map_values(check_bits(bits)), dtype=torch.float32, device=device)


class CodecTables(NamedTuple):
    """Constant tables of one map, indexed so that compiled code needs no bounds checks.

    `qmap`: the map (2**bits sorted values); `decode`: the value of each stored byte (nibble);
    `below`: for each look-up cell of |x|, the count of midpoints of the non-negative entries below
    the cell; `cell_midpoint`: the midpoint inside the cell, +inf when none.
    """

    qmap: torch.Tensor
    decode: torch.Tensor
    below: torch.Tensor
    cell_midpoint: torch.Tensor


# Encoding looks |x| up by its float32 exponent and top _MANTISSA_BITS mantissa bits: cells of at
# most 1/128 relative width, narrower than any gap of the maps, so a cell holds at most one midpoint.
_MANTISSA_BITS = 7


def _lowest_exponent(bits: int) -> int:
    """A binade below the smallest midpoint: every |x| under 2**this shares the first cell (code 0)."""
    smallest = min(v for v in _dynamic_map_values(bits) if v > 0)
    return math.floor(math.log2(smallest / 2)) - 1


# Per bits: the float32 bits >> (23 - _MANTISSA_BITS) of the first cell's lower bound, and the number
# of cells (up to the one holding 1.0); constants for compiled code.
_CELL_BASE = {bits: (_lowest_exponent(bits) + 127) << _MANTISSA_BITS for bits in SUPPORTED_BITS}
_CELLS = {bits: (-_lowest_exponent(bits) + 1) << _MANTISSA_BITS for bits in SUPPORTED_BITS}


def _build_tables(bits: int, device: torch.device) -> CodecTables:
    qmap = signed_dynamic_map(bits)
    size = qmap.shape[0]
    decode = qmap[torch.arange(size) ^ (size // 2)]
    positive = qmap[size // 2 :]  # 0, then the magnitudes up to 1
    midpoints = (positive[1:] + positive[:-1]) / 2
    cells = torch.arange(_CELLS[bits] + 1, dtype=torch.int32) + _CELL_BASE[bits]
    bounds = (cells << (23 - _MANTISSA_BITS)).view(torch.float32)
    below = torch.searchsorted(midpoints, bounds)  # midpoints < each cell's lower bound
    inside = below[1:] - below[:-1]
    if inside.max() > 1:
        raise AssertionError(f"the {bits}-bit map has two midpoints in one look-up cell")
    padded = torch.cat([midpoints, midpoints.new_full((1,), math.inf)])
    cell_midpoint = torch.where(inside > 0, padded[below[:-1]], math.inf)
    return CodecTables(*(t.to(device) for t in (qmap, decode, below[:-1].to(torch.int32), cell_midpoint)))


@functools.lru_cache(maxsize=None)
def _tables(bits: int, device: torch.device) -> CodecTables:
    built = _build_tables(bits, device)
    for table in built:  # constant sizes in compiled code (not symbols shared with equal-sized dims)
        torch._dynamo.mark_static(table)
    return built


def tables(bits: int, device: torch.device | str) -> CodecTables:
    """The tables for `bits` on `device`, built once per process and device."""
    return _tables(check_bits(bits), torch.device(device))


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for indices in range by construction (clamped, or bytes into a 256-table):
    the unchecked op, so compiled code has no bounds check or negative-index wrap per element."""
    return torch.ops.aten._unsafe_index(table, [index.to(torch.int32)])  # int32: ~3x faster gathers on CPU


def nearest_byte(normalized: torch.Tensor, below: torch.Tensor, cell_midpoint: torch.Tensor, bits: int):
    """Stored byte (int32) of the map entry nearest to each value in [-1, 1].

    j, the index among the non-negative entries, counts the midpoints below |x|: a look-up on the
    exponent and top mantissa bits of |x| gives the count below its cell, one comparison adds the
    midpoint inside the cell, if any (so ties go toward zero). A negative value stores the mirror
    ``2**bits - 1 - j``: the byte is the map index XOR 2**(bits-1).
    """
    magnitude = normalized.abs()
    cell = (magnitude.view(torch.int32) >> (23 - _MANTISSA_BITS)) - _CELL_BASE[bits]
    cell = cell.clamp(0, _CELLS[bits] - 1)
    index = _lookup(below, cell) + (_lookup(cell_midpoint, cell) < magnitude).to(torch.int32)
    return torch.where(normalized < 0, (1 << bits) - 1 - index, index)


# --- Blocks: tensors of shape (..., block length), one absmax per block (shape ...). ---------------


def encode_blocks(values: torch.Tensor, below: torch.Tensor, cell_midpoint: torch.Tensor, bits: int):
    """Quantize `values` (..., L), one block per last-dim slice: (codes uint8 (..., L or L/2), absmax)."""
    values = values.float()
    absmax = values.abs().amax(dim=-1)
    normalized = values / torch.where(absmax > 0, absmax, torch.ones_like(absmax)).unsqueeze(-1)
    codes = nearest_byte(normalized, below, cell_midpoint, bits)
    if bits == 4:
        pairs = codes.view(*codes.shape[:-1], codes.shape[-1] // 2, 2)
        codes = pairs[..., 0] | (pairs[..., 1] << 4)
    return codes.to(CODES_DTYPE), absmax


def decode_blocks(codes: torch.Tensor, absmax: torch.Tensor, decode: torch.Tensor, bits: int) -> torch.Tensor:
    """The float32 blocks (..., L) that `codes` (..., L, or L/2 for 4 bits) and `absmax` (...) encode;
    `decode` is `CodecTables.decode`, the value of each byte."""
    if bits == 4:  # byte j -> elements 2j (low nibble), 2j + 1 (high nibble), by broadcasting
        shifts = torch.arange(2, device=codes.device, dtype=torch.uint8) * 4
        codes = ((codes.unsqueeze(-1) >> shifts) & 15).view(*codes.shape[:-1], 2 * codes.shape[-1])
    return _lookup(decode, codes) * absmax.unsqueeze(-1)


# --- Rows: the tensor layout described in the module docstring. ---------------------------------


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


def _padded_tail(values: torch.Tensor) -> torch.Tensor:
    """A 4-bit block of odd length padded with one zero element (its code's unused high nibble)."""
    return F.pad(values, (0, values.shape[-1] % 2))


def quantize_blockwise(values: torch.Tensor, bits: int = 8, block_size: int = 256):
    """Quantize `values` (any shape, in the row layout): returns (codes uint8, absmax float32)."""
    check_bits(bits), check_block_size(block_size, bits)
    rows, cols = rows_and_cols(values.shape)
    codes_shape, absmax_shape = quantized_shapes(values.shape, bits, block_size)
    codes = torch.zeros(codes_shape, dtype=CODES_DTYPE, device=values.device)
    absmax = torch.zeros(absmax_shape, dtype=ABSMAX_DTYPE, device=values.device)
    codec_tables = tables(bits, values.device)
    flat = values.detach().reshape(rows, cols)
    for part_values, part_codes, part_absmax in block_views(flat, codes.view(rows, -1), absmax, bits, block_size):
        if part_values.numel():
            if bits == 4:
                part_values = _padded_tail(part_values)
            new_codes, new_absmax = encode_blocks(part_values, codec_tables.below, codec_tables.cell_midpoint, bits)
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
    decode = tables(bits, codes.device).decode
    codes_rows = codes.reshape(rows, -1)
    for part_values, part_codes, part_absmax in block_views(values, codes_rows, absmax.float(), bits, block_size):
        if part_values.numel():
            decoded = decode_blocks(part_codes, part_absmax, decode, bits)
            part_values.copy_(decoded[..., : part_values.shape[-1]])
    return values.view(tuple(shape))


def max_abs_error(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """Worst-case |x - decode(encode(x))| in each block: half the widest gap of the map, times absmax."""
    qmap = tables(bits, absmax.device).qmap
    return (qmap[1:] - qmap[:-1]).max() / 2 * absmax
