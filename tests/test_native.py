"""The native runtime (app/engine/csrc, app.engine.native) against the torch-op engine, bit for bit.

Every kernel path this CPU runs (scalar, AVX2, AVX-512 VNNI), 1 and 2 threads, batch 1 and 20, int8 and
packed DenseShift weights, layer norm on and off, on real PTB text; the qrnn-run command line tool's logits
byte for byte; no floating-point type or instruction in the sources or the compiled library; bad input
refused with one line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from app.engine.checkpoint import load_integer_checkpoint, save_integer_checkpoint
from app.engine.native import CSRC, SOURCES, NativeLanguageModel, NativeRuntimeError, build_library, isa_supported
from app.models.lm import LSTMLanguageModel
from tests.conftest import DATA_ROOT

ISAS = [isa for isa in ("scalar", "avx2", "avx512vnni") if isa_supported(isa)]
VARIANTS = {
    "irnn": {"mode": "irnn"},
    "irnn_layer_norm": {"mode": "irnn", "layer_norm": True},
    "denseshift_3bit": {"mode": "irnn_denseshift", "weight_bits": 3},
    "denseshift_2bit": {"mode": "irnn_denseshift", "weight_bits": 2},
}


@pytest.fixture(scope="module")
def ptb() -> tuple[list[str], torch.Tensor]:
    """The PTB vocabulary (train words + <eos>) and the first 400 validation tokens as ids."""

    def words(split: str) -> list[str]:
        return [
            w
            for line in (DATA_ROOT / "ptb" / f"ptb.{split}.txt").read_text().splitlines()
            for w in line.split() + ["<eos>"]
        ]

    vocab = sorted(set(words("train")))
    index = {w: i for i, w in enumerate(vocab)}
    return vocab, torch.tensor([index[w] for w in words("valid")[:400]])


@pytest.fixture(scope="module")
def checkpoints(ptb, tmp_path_factory) -> dict[str, Path]:
    """One calibrated QAT LM per variant (PTB vocabulary, 2 x 36 LSTM), exported as an integer checkpoint."""
    vocab, tokens = ptb
    out = tmp_path_factory.mktemp("native")
    paths = {}
    for name, quant in VARIANTS.items():
        torch.manual_seed(0)
        model = LSTMLanguageModel(len(vocab), 36, 36, 2, 0.0, True, quant)
        with torch.no_grad():
            model.train()(tokens[:360].reshape(10, 36))  # activation ranges from real text
        paths[name] = out / f"{name}.int.safetensors"
        save_integer_checkpoint(paths[name], model.eval().export_integer(vocab), "lm", vocab, {})
    return paths


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_native_path_equals_the_torch_engine_bit_for_bit(variant, checkpoints, ptb):
    reference, _ = load_integer_checkpoint(checkpoints[variant])
    tokens = ptb[1]
    for batch, steps in ((1, 60), (20, 12)):
        x = tokens[: batch * steps].reshape(batch, steps)
        want_logits, (want_h, want_c) = reference(x[:, : steps // 2])
        want_more, (want_h2, want_c2) = reference(x[:, steps // 2 :], (want_h, want_c))
        for isa in ISAS:
            for threads in (1, 2):
                for shift in ("packed", "int8") if variant.startswith("denseshift") else ("int8",):
                    native = NativeLanguageModel(checkpoints[variant], threads=threads, isa=isa, shift=shift)
                    logits, state = native(x[:, : steps // 2])
                    more, (h, c) = native(x[:, steps // 2 :], state)  # state carried across calls
                    case = f"{variant} {isa} threads={threads} {shift} batch={batch}"
                    assert logits.dtype == torch.int32 and torch.equal(logits, want_logits), case
                    assert torch.equal(more, want_more), case
                    assert torch.equal(h, want_h2) and torch.equal(c, want_c2), case


def test_packed_denseshift_weights_read_three_eighths_of_the_int8_bytes(checkpoints):
    packed = NativeLanguageModel(checkpoints["denseshift_3bit"], shift="packed").weight_bytes
    int8 = NativeLanguageModel(checkpoints["denseshift_3bit"], shift="int8").weight_bytes
    assert packed * 8 == int8 * 3


@pytest.fixture(scope="module")
def qrnn_run(tmp_path_factory) -> Path:
    """The command line tool, built with the documented command."""
    build = tmp_path_factory.mktemp("qrnn-build")
    result = subprocess.run(["make", "-C", str(CSRC), f"BUILD={build}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return build / "qrnn-run"


def test_cli_logits_are_byte_identical_to_the_python_engine(qrnn_run, checkpoints, ptb, tmp_path):
    vocab, tokens = ptb
    text = " ".join(vocab[i] for i in tokens[:80].tolist())
    for variant in ("irnn", "denseshift_3bit"):
        dump = tmp_path / f"{variant}.bin"
        result = subprocess.run(
            [str(qrnn_run), "lm", str(checkpoints[variant]), "--threads", "2", "--logits", str(dump)],
            input=text,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        reference, _ = load_integer_checkpoint(checkpoints[variant])
        want, _ = reference(tokens[:80].unsqueeze(0))
        assert dump.read_bytes() == want[0].contiguous().numpy().tobytes()
        lines = result.stdout.splitlines()
        assert len(lines) == 80
        argmax = [int(line.split("\t")[2]) for line in lines]
        assert argmax == want[0].argmax(dim=-1).tolist()


FLOAT_SOURCE = re.compile(
    r"\b(float|double|long double|_Float\d+|__fp16|__bf16)\b"  # floating-point types
    r"|\b\d+\.\d*([eE][-+]?\d+)?[fFlL]?\b|(?<![\w.])\.\d+|\b\d+[eE][-+]?\d+\b"  # literals 1.5, .5, 1e-3
    r"|_m\w*_(ps|pd|ss|sd|ph)\b|\bm(128|256|512)[dh]?\b(?!i)|__m(128|256|512)[dh]?\b"  # float SIMD intrinsics and types
)


def test_c_sources_name_no_floating_point_type_literal_or_intrinsic():
    for path in sorted(CSRC.glob("*.[ch]")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//")[0]
            code = re.sub(r"/\*.*?\*/|\"(\\.|[^\"])*\"", "", code)  # comments and string literals say words
            if code.lstrip().startswith(("*", "/*")):
                continue
            assert not FLOAT_SOURCE.search(code), f"{path.name}:{number}: {line.strip()}"


def test_the_float_check_catches_what_it_looks_for():
    for bad in ("double x;", "y = x * 0.5;", "eps = 1e-3;", "z = .25;", "_mm256_add_ps(a, b)", "__m512 v;", "float f;"):
        assert FLOAT_SOURCE.search(bad), bad
    for fine in ("int64_t x = 1 << 15;", "_mm512_dpbusd_epi32(s, a, b)", "__m512i v;", "x >> 12"):
        assert not FLOAT_SOURCE.search(fine), fine


# x86 floating-point arithmetic, comparison and conversion mnemonics (x87, SSE/AVX scalar and packed). Moves and
# bitwise ops on xmm/ymm/zmm registers (movaps, vxorps, ...) copy or clear integer data and are not listed.
FLOAT_MNEMONIC = re.compile(
    r"f(add|sub|mul|div|ld|st|stp|ild|ist|sqrt|com|ucom)\w*"
    r"|v?(add|sub|mul|div|sqrt|min|max|rcp|rsqrt|round|fmadd\w*|fmsub\w*|fnmadd\w*|hadd|hsub|dp)(ss|sd|ps|pd|ph)"
    r"|v?u?comis[sd]|v?cvt\w*(ss|sd|ps|pd|ph)\w*|v?cmp\w*(ss|sd|ps|pd)"
)


def float_instructions(listing: str) -> list[str]:
    """The lines of an ``objdump -d --no-show-raw-insn`` listing whose mnemonic is floating-point arithmetic."""
    lines = (re.match(r"\s*[0-9a-f]+:\t(\S+)", line) for line in listing.splitlines())
    return [m.string for m in lines if m and FLOAT_MNEMONIC.fullmatch(m.group(1))]


def test_compiled_library_has_no_floating_point_instruction(tmp_path):
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, installed with gcc) is needed to inspect the compiled runtime"
    library = build_library(tmp_path)
    listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True).stdout
    functions = re.findall(r"^[0-9a-f]+ <(qrnn_\w+)>:", listing, flags=re.M)
    assert {"qrnn_lm_step", "qrnn_matmul_rows", "qrnn_load"} <= set(functions)  # the listing holds our code
    own = [
        block
        for block in re.split(r"\n(?=[0-9a-f]+ <)", listing)
        if re.match(r"[0-9a-f]+ <(?!_|\.|frame_dummy|register_tm|deregister_tm)", block)
    ]
    hits = float_instructions("\n".join(own))
    assert not hits, "\n".join(hits[:10])
    # the check fires on float arithmetic, not on integer code or on addresses that spell a mnemonic
    assert len(float_instructions("  4011a6:\tvaddps %ymm1,%ymm0,%ymm0\n  4011aa:\tcvtsi2sd %rax,%xmm0")) == 2
    assert float_instructions("    fadd:\tjne    fc30 <x>\n  4011a6:\tvpaddd %ymm1,%ymm0,%ymm0") == []


def test_runtime_sources_cover_the_library():
    assert set(SOURCES) <= {path.name for path in CSRC.glob("*.c")}


def test_bad_input_is_refused_with_one_line(checkpoints, tmp_path, qrnn_run):
    good = checkpoints["irnn"]
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    for path, words in (
        (truncated, "truncated"),
        (garbage, "header"),
        (tmp_path / "missing.safetensors", "cannot open"),
    ):
        with pytest.raises(NativeRuntimeError, match=words) as error:
            NativeLanguageModel(path)
        assert "\n" not in str(error.value) and str(path) in str(error.value)
        result = subprocess.run([str(qrnn_run), "lm", str(path)], input="", capture_output=True, text=True)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1 and words in result.stderr
    native = NativeLanguageModel(good)
    with pytest.raises(NativeRuntimeError, match="outside the vocabulary"):
        native(torch.tensor([[0, native.vocab_size]]))
    with pytest.raises(NativeRuntimeError, match="threads"):
        native.set_threads(0)
    with pytest.raises(ValueError, match="isa"):
        NativeLanguageModel(good, isa="sse9")
    for args, words in ((["--threads", "0"], "--threads"), (["--isa", "x"], "--isa"), (["--bogus"], "unknown")):
        result = subprocess.run([str(qrnn_run), "lm", str(good), *args], input="", capture_output=True, text=True)
        assert result.returncode == 2 and words in result.stderr.splitlines()[0]
    result = subprocess.run(
        [str(qrnn_run), "lm", str(good), "--ids"], input="1 2 999999", capture_output=True, text=True
    )
    assert result.returncode == 1 and "outside the vocabulary" in result.stderr and result.stdout == ""


def test_without_a_c_compiler_the_runtime_says_so_in_one_line(monkeypatch, tmp_path):
    from app.engine import native

    monkeypatch.setattr(native, "compiler", lambda: None)
    with pytest.raises(NativeRuntimeError, match="no C compiler found") as error:
        native.build_library(tmp_path / "fresh")
    assert "\n" not in str(error.value)
