"""DenseShift in the integer engine: N-bit code packing and the multiplication-free matmul, proven equal
to the int8-decoded ``_int_mm`` path and to a plain integer reference, under the integer-only guard."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from app.engine.guard import IntegerOnlyGuard
from app.engine.packing import ShiftCodes, pack_codes, packed_size, unpack_codes
from app.engine.shift import decode_weight, decoded_matmul, shift_matmul
from app.quant.denseshift import DenseShiftWeight


def random_codes(shape, bits, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sign_bit = torch.randint(0, 2, shape, generator=generator).to(torch.uint8)
    exponent = torch.randint(0, 1 << (bits - 1), shape, generator=generator)
    return sign_bit, exponent


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("count", [1, 7, 8, 37, 1000])
def test_pack_unpack_round_trip(bits, count):
    sign_bit, exponent = random_codes((count,), bits, seed=count)
    packed = pack_codes(sign_bit, exponent, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(count, bits)
    sign_back, exponent_back = unpack_codes(packed, bits, count)
    assert torch.equal(sign_back, sign_bit) and torch.equal(exponent_back, exponent)


def test_three_bit_codes_pack_eight_weights_into_three_bytes():
    assert packed_size(8, 3) == 3 and packed_size(800, 3) == 300
    assert packed_size(8, 2) == 2 and packed_size(8, 4) == 4
    # codes 1..7, 0 (code = sign_bit << 2 | exponent), little-endian 3-bit fields: 0x1F58D1
    sign_bit = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0], dtype=torch.uint8)
    exponent = torch.tensor([1, 2, 3, 0, 1, 2, 3, 0])
    assert pack_codes(sign_bit, exponent, 3).tolist() == [0xD1, 0x58, 0x1F]


def test_a_module_survives_packing_with_its_shape():
    module = DenseShiftWeight.from_shape((6, 11), 3)
    sign_bit, exponent = module.codes()
    packed = pack_codes(sign_bit, exponent, 3)
    sign_back, exponent_back = unpack_codes(packed, 3, sign_bit.numel())
    assert torch.equal(decode_weight(sign_back, exponent_back).reshape(6, 11), module.integer_weight())


def test_unpacking_with_the_wrong_bit_width_names_expected_and_found_sizes():
    packed = pack_codes(*random_codes((8,), 3), bits=3)  # 3 bytes
    with pytest.raises(ValueError, match="8 codes of 2 bits need 2 uint8 bytes, found 3"):
        unpack_codes(packed, 2, 8)
    with pytest.raises(ValueError, match="8 codes of 4 bits need 4 uint8 bytes, found 3"):
        unpack_codes(packed, 4, 8)


def test_codes_read_with_another_bit_width_are_caught_by_their_nonzero_padding():
    # 12 codes: 4-bit packing fills 6 bytes exactly, 3-bit packing of 12 codes also takes 6 bytes (4 codes padding)
    sign_bit, exponent = random_codes((12,), 4, seed=1)
    exponent[-3:] = 7
    packed = pack_codes(sign_bit, exponent, 4)
    assert packed.numel() == packed_size(12, 3)
    with pytest.raises(ValueError, match="padding after the last of 12 3-bit codes is not zero"):
        unpack_codes(packed, 3, 12)
    with pytest.raises(ValueError, match="padding after the last of 12 3-bit codes is not zero"):
        ShiftCodes(packed, 3, [3, 4])  # the integer checkpoint builds these at load
    assert ShiftCodes(packed, 4, [3, 4]).sign_exponent[1].flatten().tolist() == exponent.tolist()


def test_packing_rejects_exponents_outside_the_bit_width_and_unsupported_widths():
    with pytest.raises(ValueError, match=r"\[0, 1\] for 2-bit codes, found \[0, 3\]"):
        pack_codes(torch.zeros(4, dtype=torch.uint8), torch.tensor([0, 1, 2, 3]), 2)
    with pytest.raises(ValueError, match="2, 3 or 4 bits"):
        pack_codes(torch.zeros(4, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), 5)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_shift_kernel_equals_int8_decoded_path_equals_plain_reference(bits):
    torch.manual_seed(bits)
    x_q = torch.randint(-128, 128, (9, 70), dtype=torch.int8)
    x_q[0] = -128  # the extreme activation
    sign_bit, exponent = random_codes((33, 70), bits, seed=bits)
    exponent[0] = (1 << (bits - 1)) - 1  # the largest magnitude, both signs (4-bit: +-128, not int8)
    reference = x_q.long() @ decode_weight(sign_bit, exponent).T
    assert torch.equal(shift_matmul(x_q, sign_bit, exponent), reference)
    assert torch.equal(decoded_matmul(x_q, sign_bit, exponent), reference)


def test_shift_kernel_is_exact_across_chunks(monkeypatch):
    import app.engine.shift as shift

    monkeypatch.setattr(shift, "_CHUNK_ELEMENTS", 50)  # forces one output row per chunk
    x_q = torch.randint(-128, 128, (3, 20), dtype=torch.int8)
    sign_bit, exponent = random_codes((5, 20), 4)
    assert torch.equal(shift.shift_matmul(x_q, sign_bit, exponent), x_q.long() @ decode_weight(sign_bit, exponent).T)


@pytest.mark.parametrize("bits", [2, 4])
def test_both_kernels_and_packing_run_under_the_integer_only_guard(bits):
    x_q = torch.randint(-128, 128, (4, 24), dtype=torch.int8)
    sign_bit, exponent = random_codes((10, 24), bits)
    exponent[0, 0] = (1 << (bits - 1)) - 1
    with IntegerOnlyGuard() as guard:
        packed = pack_codes(sign_bit, exponent, bits)
        sign_back, exponent_back = unpack_codes(packed, bits, sign_bit.numel())
        sign_back, exponent_back = sign_back.reshape(10, 24), exponent_back.reshape(10, 24)
        shifted = shift_matmul(x_q, sign_back, exponent_back)
        decoded = decoded_matmul(x_q, sign_back, exponent_back)
    assert guard.ops > 0
    assert torch.equal(shifted, decoded)


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_shift_kernel_uses_no_multiplication():
    x_q = torch.randint(-128, 128, (4, 24), dtype=torch.int8)
    sign_bit, exponent = random_codes((10, 24), 3)
    with RecordOps() as recorder:
        shift_matmul(x_q, sign_bit, exponent)
    multiplies = {name for name in recorder.names if "mul" in name or "mm" in name or name in ("bmm", "addmm", "dot")}
    assert not multiplies, recorder.names
    assert {"cumsum", "sub", "__lshift__"} <= recorder.names  # running sums, +sum - -sum, one shift per exponent
