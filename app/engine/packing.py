"""Dense storage of DenseShift weight codes: N-bit codes packed into bytes (integer ops only).

Code layout (docs/methods.md section 5.7): one N-bit code per weight ``w = s * 2^p``,

    code = sign_bit << (N - 1) | exponent        sign_bit = 1 for s = -1, exponent p in [0, 2^(N-1) - 1]

so 3-bit codes 0..3 are +1, +2, +4, +8 and 4..7 are -1, -2, -4, -8. Codes form a little-endian
bit stream: code ``i`` occupies stream bits ``[i*N, (i+1)*N)`` and byte ``j`` holds stream bits
``[8j, 8j+8)``. A group of ``lcm(N, 8) / N`` codes fills ``lcm(N, 8) / 8`` bytes exactly:

    N = 2: 4 codes -> 1 byte;  N = 3: 8 codes -> 3 bytes;  N = 4: 2 codes -> 1 byte.

The last group is padded with zero codes, so ``count`` codes take ``ceil(count / group) * bytes`` bytes
(3-bit: 10.7x smaller than float32).

``ShiftCodes`` is one packed weight as the integer checkpoint stores it; engine layers given one decode it
once to int8 (``decode_weight_fields``) and keep the codes for saving and for the shift kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from app.engine.shift import ShiftPlan, decode_weight

CODE_BITS = (2, 3, 4)


def _group(bits: int) -> tuple[int, int]:
    """(codes, bytes) of one packing group for ``bits``-bit codes."""
    if bits not in CODE_BITS:
        raise ValueError(f"DenseShift codes are 2, 3 or 4 bits wide, got bits={bits}")
    stream_bits = math.lcm(bits, 8)
    return stream_bits // bits, stream_bits // 8


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` packed ``bits``-bit codes take."""
    codes_per_group, bytes_per_group = _group(bits)
    return -(-count // codes_per_group) * bytes_per_group


def pack_codes(sign_bit: Tensor, exponent: Tensor, bits: int) -> Tensor:
    """sign_bit: any shape, uint8/bool (1 = negative); exponent: same shape, integer in [0, 2^(bits-1) - 1]
    -> (packed_size(numel, bits),) uint8, in flattened (row-major) order. The shape is the caller's to keep."""
    codes_per_group, bytes_per_group = _group(bits)
    if sign_bit.shape != exponent.shape:
        raise ValueError(f"sign_bit {tuple(sign_bit.shape)} and exponent {tuple(exponent.shape)} differ in shape")
    max_exponent = (1 << (bits - 1)) - 1
    exponent = exponent.reshape(-1).to(torch.int64)
    if exponent.numel() and (int(exponent.min()) < 0 or int(exponent.max()) > max_exponent):
        raise ValueError(
            f"exponents must lie in [0, {max_exponent}] for {bits}-bit codes, "
            f"found [{int(exponent.min())}, {int(exponent.max())}]"
        )
    code = (sign_bit.reshape(-1).to(torch.int64) << (bits - 1)) | exponent
    count = code.numel()
    pad = -count % codes_per_group
    code = torch.cat([code, code.new_zeros(pad)]).reshape(-1, codes_per_group)
    # one int64 word per group (at most 24 bits used): OR of disjoint bit fields, no multiply
    word = code.new_zeros(code.shape[0])
    for i in range(codes_per_group):
        word = word | (code[:, i] << (bits * i))
    packed = torch.stack([(word >> (8 * j)) & 0xFF for j in range(bytes_per_group)], dim=1)
    return packed.reshape(-1).to(torch.uint8)


def _codes(packed: Tensor, bits: int) -> Tensor:
    """(groups * bytes,) uint8 -> (groups * codes,) int64 N-bit codes, padding included."""
    codes_per_group, bytes_per_group = _group(bits)
    byte = packed.reshape(-1, bytes_per_group).to(torch.int64)
    word = byte.new_zeros(byte.shape[0])
    for j in range(bytes_per_group):
        word = word | (byte[:, j] << (8 * j))
    mask = (1 << bits) - 1
    return torch.stack([(word >> (bits * i)) & mask for i in range(codes_per_group)], dim=1).reshape(-1)


def check_packed(packed: Tensor, bits: int, count: int) -> None:
    """A ValueError unless ``packed`` can hold exactly ``count`` codes of ``bits`` bits as ``pack_codes``
    writes them: the byte count must match, and the padding after the last code must be zero.

    This catches codes read with another bit width than they were packed with wherever the sizes differ
    or the padding holds codes; an exact fit without padding (e.g. 12 codes: 3-bit and 4-bit both take
    6 bytes) is any valid bit stream and cannot be told apart.
    """
    codes_per_group, bytes_per_group = _group(bits)
    expected = packed_size(count, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed DenseShift weights: {count} codes of {bits} bits need {expected} uint8 bytes, "
            f"found {packed.numel()} {packed.dtype} values (wrong bit width or count?)"
        )
    pad = -count % codes_per_group
    if pad and bool(_codes(packed[-bytes_per_group:], bits)[-pad:].any()):
        raise ValueError(
            f"packed DenseShift weights: the padding after the last of {count} {bits}-bit codes is not zero, "
            f"so these bytes were not packed as {bits}-bit codes (wrong bit width?)"
        )


def unpack_codes(packed: Tensor, bits: int, count: int) -> tuple[Tensor, Tensor]:
    """packed: (packed_size(count, bits),) uint8 -> (sign_bit (count,) uint8, exponent (count,) int64).

    Bytes that cannot hold ``count`` codes of ``bits`` bits (``check_packed``: e.g. 3-bit bytes read as
    2-bit) are a ValueError naming both sizes.
    """
    check_packed(packed, bits, count)
    code = _codes(packed, bits)[:count]
    sign_bit = (code >> (bits - 1)).to(torch.uint8)
    exponent = code & ((1 << (bits - 1)) - 1)
    return sign_bit, exponent


@dataclass
class ShiftCodes:
    """A DenseShift weight ``s * 2^p`` of ``shape`` as stored: ``bits``-bit codes packed by ``pack_codes``."""

    packed: Tensor  # (packed_size(numel, bits),) uint8
    bits: int
    shape: list[int]

    def __post_init__(self) -> None:
        check_packed(self.packed, self.bits, math.prod(self.shape))

    @classmethod
    def pack(cls, sign_bit: Tensor, exponent: Tensor, bits: int) -> ShiftCodes:
        return cls(pack_codes(sign_bit, exponent, bits), bits, list(sign_bit.shape))

    @cached_property
    def sign_exponent(self) -> tuple[Tensor, Tensor]:
        """(sign_bit (shape) uint8, exponent (shape) int64), unpacked once."""
        sign_bit, exponent = unpack_codes(self.packed, self.bits, math.prod(self.shape))
        return sign_bit.reshape(self.shape), exponent.reshape(self.shape)

    @cached_property
    def shift_plan(self) -> ShiftPlan:
        """The codes arranged for the multiplication-free kernel (2-d weights), built once."""
        return ShiftPlan.from_codes(*self.sign_exponent)

    def to_int8(self) -> Tensor:
        """(shape) int8 weight s * 2^p. 4-bit codes reach +-128, which int8 cannot hold: a ValueError."""
        if self.bits > 3:
            raise ValueError(f"{self.bits}-bit DenseShift codes reach +-128: the int8 engine runs 2- and 3-bit codes")
        return decode_weight(*self.sign_exponent).to(torch.int8)


def decode_weight_fields(layer: Any, *names: str) -> None:
    """For an engine layer's ``__post_init__``: each weight field given as ``ShiftCodes`` becomes its int8
    decode (the fast path: int8 GEMMs), and the codes stay in ``layer.shift_codes[name]`` (the checkpoint
    stores them instead of the int8 weight; ``app.engine.shift.use_shift_kernel`` runs on them)."""
    layer.shift_codes = {}
    layer.shift_kernel = False
    for name in names:
        value = getattr(layer, name)
        if isinstance(value, ShiftCodes):
            layer.shift_codes[name] = value
            setattr(layer, name, value.to_int8())
