"""Ballots: each rank's update directions, exchanged in bits and tallied into one vote per element.

A ballot is one rank's direction for one parameter: -1, 0 or +1 per element (0 where sign(c) is 0,
or where a cautious mask dropped it), or no ballot at all when the rank has no gradient for it.
`exchange_ballots` sends every ballot of a step in one collective (two when some are 0) and
returns, per parameter, the sum of the ballots cast and how many ranks cast one. Every rank gets
the same integers, so every rank applies the same vote.

Two wire formats; `choose_collective` takes the one that sends fewer bytes at the world size W
(bytes a rank sends per element under ring algorithms):

* ``all_gather``: each rank's signs packed 8 per byte (bit = ballot > 0) after a header byte per
  parameter (has a ballot; has a 0 in it). When some rank abstains on a parameter, a second
  all-gather sends that parameter's "nonzero" bits. Cost (W-1)/8 per element (2x that with zeros,
  e.g. with cautious masking).
* ``all_reduce``: the ballots as small integers (int8 up to W=127), summed. Cost 2(W-1)/W x the
  integer's size; it needs no second round for zeros.

An fp32 gradient all-reduce (DDP's) sends 2(W-1)/W x 4 bytes per element: the packed all-gather is
64/W times smaller (32x at 2 ranks, 16x at 4) and the int8 all-reduce 4x; the all-gather is
chosen up to W=16 (W=8 when zeros are expected).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..checks import check_choice

COLLECTIVES = ("auto", "all_gather", "all_reduce")
HAS_BALLOT, HAS_ZERO = 1, 2  # header bits


def _int64(bits: int) -> int:
    """A 64-bit pattern as the signed value torch.int64 holds."""
    return bits - (1 << 64) if bits >= 1 << 63 else bits


# Bit tricks on int64 words (torch's int64 arithmetic wraps around):
# packing: eight 0/1 bytes b_0..b_7 (little-endian) times PACK hold sum(b_i << i) in the top byte;
# unpacking: a byte times REPLICATE fills every byte with it, SELECT keeps bit i in byte i, adding
# LOW7 carries any such bit into the byte's top bit (never into the next byte), HIGH >> 7 makes 0/1.
PACK = 0x0102040810204080
REPLICATE = 0x0101010101010101
SELECT = _int64(0x8040201008040201)
LOW7 = 0x7F7F7F7F7F7F7F7F
HIGH = _int64(0x8080808080808080)
ONES = 0x0101010101010101


def sum_dtype(world_size: int) -> torch.dtype:
    """The smallest signed integer dtype that holds a sum of `world_size` ballots (and the count)."""
    for dtype in (torch.int8, torch.int16, torch.int32):
        if world_size <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def bytes_sent_per_element(collective: str, world_size: int, bits_per_element: int = 1) -> float:
    """Bytes one rank sends per parameter element under ring algorithms (see the module docstring)."""
    if world_size <= 1:
        return 0.0
    if collective == "all_gather":
        return (world_size - 1) * bits_per_element / 8
    itemsize = torch.empty((), dtype=sum_dtype(world_size)).element_size()
    return 2 * (world_size - 1) / world_size * itemsize


def choose_collective(world_size: int, expect_zeros: bool = False, collective: str = "auto") -> str:
    """`collective`, or for 'auto' the format that sends fewer bytes (the all-gather on a tie)."""
    check_choice(collective, "collective", COLLECTIVES)
    if collective != "auto":
        return collective
    bits = 2 if expect_zeros else 1
    gather = bytes_sent_per_element("all_gather", world_size, bits)
    return "all_gather" if gather <= bytes_sent_per_element("all_reduce", world_size) else "all_reduce"


def padded_length(count: int) -> int:
    """`count` rounded up to whole bytes of bits, and to whole int64 words of bytes."""
    return -(-count // 64) * 64


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """A 1-D bool tensor of `padded_length` elements as uint8, element i in bit i % 8 of byte i // 8."""
    words = bits.contiguous().view(torch.uint8).view(torch.int64)
    return (((words * PACK) >> 56) & 0xFF).to(torch.uint8)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """The bits of a 1-D uint8 tensor as int64 words whose bytes are 0 or 1 (byte i: bit i % 8 of
    packed byte i // 8); a sum of up to 255 such words counts the ones per byte without carries."""
    replicated = packed.to(torch.int64) * REPLICATE
    return ((((replicated & SELECT) + LOW7) & HIGH) >> 7) & ONES


def count_set_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """For rows of packed bits (ranks, bytes), how many rows have each of the first `count` bits
    set: uint8 (count,) for up to 255 rows, else int32."""
    if packed.shape[0] <= 255:
        total = unpack_bits(packed[0])
        for row in packed[1:]:
            total += unpack_bits(row)
        return total.view(torch.uint8)[:count]
    totals = torch.zeros(packed.shape[1] * 8, dtype=torch.int32, device=packed.device)
    for row in packed:
        totals += unpack_bits(row).view(torch.uint8)
    return totals[:count]


def all_gather_rows(buffer: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's 1-D `buffer` (equal sizes) as the rows of one (world size, size) tensor: one
    all-gather (``all_gather_single``, named ``all_gather_into_tensor`` before torch 2.13)."""
    world_size = dist.get_world_size(group)
    gathered = torch.empty(world_size * buffer.numel(), dtype=buffer.dtype, device=buffer.device)
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    all_gather(gathered, buffer, group=group)
    return gathered.view(world_size, -1)


def _split(flat: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(flat, sizes)) if sizes else []


def exchange_ballots(ballots, sizes, device, *, group=None, collective="all_gather"):
    """Tally the ranks' ballots: `ballots` (a flattened -1/0/+1 tensor per parameter, or None where
    this rank has none), `sizes` their element counts (equal on every rank).

    Returns ``(sums, voters)``: per parameter the sum of the ballots cast, as float32 (exact: at most
    the world size in magnitude; None where no rank cast one), and the number of ranks that cast one. Collective: every rank must call it with the
    same sizes and `collective`.
    """
    if collective == "all_reduce":
        return _exchange_by_all_reduce(ballots, sizes, device, group)
    return _exchange_by_all_gather(ballots, sizes, device, group)


def _exchange_by_all_reduce(ballots, sizes, device, group):
    dtype = sum_dtype(dist.get_world_size(group))
    header = torch.tensor([ballot is not None for ballot in ballots], dtype=dtype, device=device)
    body = [torch.zeros(size, dtype=dtype, device=device) if ballot is None else ballot.to(dtype)
            for ballot, size in zip(ballots, sizes)]
    buffer = torch.cat([header, *body])
    dist.all_reduce(buffer, group=group)
    voters = buffer[: len(sizes)].tolist()
    sums = _split(buffer[len(sizes) :].to(torch.float32), sizes)
    return [total if count else None for total, count in zip(sums, voters)], voters


def _positive(ballot: torch.Tensor, out: torch.Tensor) -> None:
    torch.gt(ballot, 0, out=out)


def _nonzero(ballot: torch.Tensor, out: torch.Tensor) -> None:
    torch.ne(ballot, 0, out=out)


def _bit_plane(ballots, sizes, device, keep, test) -> torch.Tensor:
    """`test(ballot)` of the ballots whose index `keep` accepts, side by side, packed (no ballot: 0s)."""
    kept = [index for index in range(len(sizes)) if keep(index)]
    bits = torch.zeros(padded_length(sum(sizes[i] for i in kept)), dtype=torch.bool, device=device)
    offset = 0
    for index in kept:
        if ballots[index] is not None:
            test(ballots[index], out=bits[offset : offset + sizes[index]])
        offset += sizes[index]
    return pack_bits(bits)


def _exchange_by_all_gather(ballots, sizes, device, group):
    world_size = dist.get_world_size(group)
    header = torch.tensor(
        [0 if b is None else HAS_BALLOT | (HAS_ZERO if int(torch.count_nonzero(b)) < b.numel() else 0)
         for b in ballots],
        dtype=torch.uint8, device=device,
    )
    positive = _bit_plane(ballots, sizes, device, lambda index: True, _positive)
    gathered = all_gather_rows(torch.cat([header, positive]), group)
    headers = gathered[:, : len(sizes)]
    voters = ((headers & HAS_BALLOT) > 0).sum(dim=0).tolist()
    positives = _split(count_set_bits(gathered[:, len(sizes) :], sum(sizes)), sizes)
    # Parameters on which some rank casts a 0 or no ballot: their "nonzero" bits, in a second round.
    zeros = ((headers & HAS_ZERO) > 0).any(dim=0).tolist()
    abstaining = [0 < count and (count < world_size or zero) for count, zero in zip(voters, zeros)]
    nonzero = [None] * len(sizes)
    if any(abstaining):
        plane = _bit_plane(ballots, sizes, device, abstaining.__getitem__, _nonzero)
        flagged = [index for index, flag in enumerate(abstaining) if flag]
        counts = count_set_bits(all_gather_rows(plane, group), sum(sizes[i] for i in flagged))
        for index, count in zip(flagged, _split(counts, [sizes[i] for i in flagged])):
            nonzero[index] = count
    sums = []
    for index, count in enumerate(voters):
        if not count:
            sums.append(None)
        else:  # a +1 is a set sign bit; every other ballot cast is a -1 or a 0
            total = positives[index].to(torch.float32).mul_(2)
            sums.append(total.sub_(world_size if nonzero[index] is None else nonzero[index]))
    return sums, voters
