"""The native integer runtime (``csrc/qrnn_*.c``): the integer LM step in C, batched and threaded.

The library is plain C11 (libc + pthreads, no floating-point type anywhere) with run-time kernel selection:
portable scalar (the reference), AVX2 and AVX-512 VNNI, on int8 or packed 3-bit DenseShift weights. Every
path returns the same integers as the torch-op engine (``app.engine.lm.IntegerLanguageModel``);
tests/test_native.py checks them bit for bit. The same sources build the ``qrnn-run`` command line tool
(``make -C app/engine/csrc``), which runs an integer checkpoint without Python.

Here the library is compiled on first use with the system C compiler into a per-user cache, keyed by the
sources, the compiler and this CPU's features, and loaded with ctypes. Tensors cross the boundary as
integer torch tensors (int64 tokens in, int32 logits out).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

CSRC = Path(__file__).with_name("csrc")
# the runtime and the two kernels of the torch-op engine (app/engine/kernels.py): one library
SOURCES = (
    "qrnn_kernels.c",
    "qrnn_pool.c",
    "qrnn_file.c",
    "qrnn_load.c",
    "qrnn_lstm.c",
    "qrnn_model.c",
    "qrnn_asr.c",
    "int8_gemm.c",
    "int_lstm.c",
)
HEADERS = ("qrnn.h", "qrnn_asr.h", "qrnn_internal.h")
CFLAGS = ("-O3", "-std=c11", "-fPIC", "-pthread", "-Wall")  # no -march: kernels pick their ISA at run time
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512vnni": 3}
LOAD_SHIFT_AS_INT8 = 1


class NativeRuntimeError(RuntimeError):
    """The native runtime could not be built, or refused a file or an argument (one line says why)."""


def _cache_dir() -> Path:
    root = os.environ.get("QRNN_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "qrnn-speech"
    )
    return Path(root)


def _cpu_features() -> bytes:
    """This CPU's feature flags (the cache key: a library built elsewhere is not reused here)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.encode()
    except OSError:
        pass
    return os.uname().machine.encode()


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def build_library(target_dir: Path | None = None) -> Path:
    """Compile the runtime into ``target_dir`` (default: the per-user cache) unless it is there already."""
    cc = compiler()
    if cc is None:
        raise NativeRuntimeError(
            "no C compiler found (looked for $CC, cc, gcc, clang): install one (Debian: apt-get install gcc) "
            "to use the native integer runtime"
        )
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        key.update((CSRC / name).read_bytes())
    key.update(" ".join([cc, *version, *CFLAGS]).encode() + _cpu_features())
    target = (target_dir or _cache_dir()) / f"libqrnn-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    cmd = [cc, *CFLAGS, "-shared", *(str(CSRC / name) for name in SOURCES), "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        first = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise NativeRuntimeError(f"compiling the native runtime with {cc} failed: {first}")
    os.replace(tmp, target)  # atomic: concurrent builders never load a half-written library
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, i64, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_char_p
    signatures = {
        "qrnn_last_error": ([], s),
        "qrnn_isa_supported": ([i], i),
        "qrnn_isa_name": ([i], s),
        "qrnn_load": ([s, i], p),
        "qrnn_free": ([p], None),
        "qrnn_set_threads": ([p, i], i),
        "qrnn_set_isa": ([p, i], i),
        "qrnn_get_isa": ([p], i),
        "qrnn_kind": ([p], s),
        "qrnn_lm_vocab_size": ([p], i),
        "qrnn_lm_layers": ([p], i),
        "qrnn_lm_hidden": ([p], i),
        "qrnn_lm_logit_frac": ([p], i),
        "qrnn_weight_bytes": ([p], i64),
        "qrnn_lm_session": ([p, i], p),
        "qrnn_session_free": ([p], None),
        "qrnn_lm_reset": ([p], None),
        "qrnn_lm_get_state": ([p, p, p], None),
        "qrnn_lm_set_state": ([p, p, p], None),
        "qrnn_lm_step": ([p, p, p], i),
        "qrnn_asr_vocab_size": ([p], i),
        "qrnn_asr_feat_dim": ([p], i),
        "qrnn_asr_feat_frac": ([p], i),
        "qrnn_asr_encoder_dim": ([p], i),
        "qrnn_asr_decoder_layers": ([p], i),
        "qrnn_asr_decoder_hidden": ([p], i),
        "qrnn_asr_logit_frac": ([p], i),
        "qrnn_asr_encode": ([p, p, i, i], p),
        "qrnn_utterance_free": ([p], None),
        "qrnn_asr_frames": ([p], i),
        "qrnn_asr_keys": ([p, p, p], None),
        "qrnn_asr_ctc_logits": ([p, p, p], i),
        "qrnn_asr_decode_step": ([p, p, i, p, p, p, p], i),
        "qrnn_asr_greedy": ([p, p, i64, i64, i, p], i),
        "qrnn_asr_ctc_best_path": ([p, p, i64, p], i),
        "qrnn_int8_gemm_nt": ([p] * 3 + [i64] * 3, i),
        "qrnn_weight_new": ([p, i64, i64], p),
        "qrnn_weight_delete": ([p], None),
        "qrnn_weight_matmul": ([p, p, i64, p], i),
        "qrnn_lstm_direction": ([p] * 4 + [i64] * 2 + [p] * 3 + [i64] * 5 + [p] * 4 + [i64] * 3, i),
    }
    for name, (args, res) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The loaded runtime (built on first use). Raises NativeRuntimeError with one line when it cannot be."""
    return _declare(ctypes.CDLL(str(build_library())))


def _error(lib: ctypes.CDLL) -> NativeRuntimeError:
    return NativeRuntimeError(lib.qrnn_last_error().decode(errors="replace"))


def isa_supported(isa: str) -> bool:
    return bool(library().qrnn_isa_supported(ISAS[isa]))


class _NativeModel:
    """A checkpoint loaded by the C runtime, with its threads and kernel path (see NativeLanguageModel)."""

    kind = ""

    def __init__(self, path: str | Path, threads: int = 1, isa: str = "auto", shift: str = "packed"):
        if shift not in ("packed", "int8"):
            raise ValueError(f"shift must be 'packed' or 'int8', got {shift!r}")
        if isa not in ISAS:
            raise ValueError(f"isa must be one of {sorted(ISAS)}, got {isa!r}")
        self._lib = library()
        self.path = Path(path)
        handle = self._lib.qrnn_load(str(self.path).encode(), LOAD_SHIFT_AS_INT8 if shift == "int8" else 0)
        if not handle:
            raise _error(self._lib)
        self._handle = handle
        kind = self._lib.qrnn_kind(handle).decode()
        if kind != self.kind:
            raise NativeRuntimeError(f"{path}: a kind {kind} checkpoint, not {self.kind} ({type(self).__name__})")
        self.weight_bytes = self._lib.qrnn_weight_bytes(handle)
        self.set_threads(threads)
        self.set_isa(isa)

    def set_threads(self, threads: int) -> None:
        if not isinstance(threads, int) or self._lib.qrnn_set_threads(self._handle, threads) != 0:
            raise NativeRuntimeError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = threads

    def set_isa(self, isa: str) -> None:
        if isa not in ISAS:
            raise ValueError(f"isa must be one of {sorted(ISAS)}, got {isa!r}")
        if self._lib.qrnn_set_isa(self._handle, ISAS[isa]) != 0:
            raise _error(self._lib)
        self.isa = self._lib.qrnn_isa_name(self._lib.qrnn_get_isa(self._handle)).decode()

    def _close(self) -> None:
        pass

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._close()
            self._lib.qrnn_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


class NativeLanguageModel(_NativeModel):
    """An integer LM checkpoint run by the C runtime; called like ``IntegerLanguageModel``.

    ``threads``: worker threads of a step (>= 1). ``isa``: "auto" (the fastest kernels this CPU runs),
    "scalar", "avx2" or "avx512vnni". ``shift``: how DenseShift weights run: "packed" (their 3-bit codes,
    decoded in registers) or "int8" (decoded once at load, the int8 kernels).
    """

    kind = "lm"

    def __init__(self, path: str | Path, threads: int = 1, isa: str = "auto", shift: str = "packed"):
        self._sessions: dict[int, int] = {}
        super().__init__(path, threads, isa, shift)
        self.vocab_size = self._lib.qrnn_lm_vocab_size(self._handle)
        self.num_layers = self._lib.qrnn_lm_layers(self._handle)
        self.hidden_size = self._lib.qrnn_lm_hidden(self._handle)
        self.logit_frac = self._lib.qrnn_lm_logit_frac(self._handle)

    def _session(self, batch: int) -> int:
        session = self._sessions.get(batch)
        if session is None:
            session = self._lib.qrnn_lm_session(self._handle, batch)
            if not session:
                raise _error(self._lib)
            self._sessions[batch] = session
        return session

    def init_state(self, batch_size: int) -> tuple[Tensor, Tensor]:
        shape = (self.num_layers, batch_size, self.hidden_size)
        return torch.zeros(shape, dtype=torch.int8), torch.zeros(shape, dtype=torch.int16)

    def __call__(
        self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """tokens (B, T) int64 -> (logits (B, T, V) int32 at 2^-logit_frac, (h int8, c int16) each (L, B, H))."""
        if tokens.dtype != torch.int64 or tokens.dim() != 2:
            raise TypeError(f"tokens must be a (B, T) int64 tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        batch, steps = tokens.shape
        session = self._session(batch)
        if state is None:
            self._lib.qrnn_lm_reset(session)
        else:
            h, c = (t.to(dtype).contiguous() for t, dtype in zip(state, (torch.int8, torch.int16)))
            if tuple(h.shape) != (self.num_layers, batch, self.hidden_size) or h.shape != c.shape:
                raise ValueError(f"state must be two (L={self.num_layers}, B={batch}, H={self.hidden_size}) tensors")
            self._lib.qrnn_lm_set_state(session, h.data_ptr(), c.data_ptr())
        columns = tokens.t().contiguous()  # (T, B): one step's tokens are contiguous
        logits = torch.empty(steps, batch, self.vocab_size, dtype=torch.int32)
        for t in range(steps):
            if self._lib.qrnn_lm_step(session, columns[t].data_ptr(), logits[t].data_ptr()) != 0:
                raise _error(self._lib)
        h, c = self.init_state(batch)
        self._lib.qrnn_lm_get_state(session, h.data_ptr(), c.data_ptr())
        return logits.transpose(0, 1), (h, c)

    def _close(self) -> None:
        for session in self._sessions.values():
            self._lib.qrnn_session_free(session)
        self._sessions.clear()


class NativeMemory:
    """One encoded utterance held by the C runtime (its keys and their attention projection)."""

    def __init__(self, lib: ctypes.CDLL, handle: int):
        self._lib, self.handle = lib, handle
        self.frames = lib.qrnn_asr_frames(handle)

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self._lib.qrnn_utterance_free(self.handle)
            self.handle = None


class NativeASRModel(_NativeModel):
    """An integer speech recognizer checkpoint run by the C runtime, with the engine's interface for one
    utterance at a time: ``encode``, ``init_state``, ``decode_step`` (n hypotheses), ``ctc_logits``; and
    ``greedy``, the whole argmax decoding in C, and ``ctc_best_path``, the CTC layer's."""

    kind = "asr"

    def __init__(self, path: str | Path, threads: int = 1, isa: str = "auto", shift: str = "packed"):
        super().__init__(path, threads, isa, shift)
        lib, h = self._lib, self._handle
        self.vocab_size = lib.qrnn_asr_vocab_size(h)
        self.feat_dim, self.feat_frac = lib.qrnn_asr_feat_dim(h), lib.qrnn_asr_feat_frac(h)
        self.encoder_dim, self.logit_frac = lib.qrnn_asr_encoder_dim(h), lib.qrnn_asr_logit_frac(h)
        self.decoder_layers, self.decoder_hidden = lib.qrnn_asr_decoder_layers(h), lib.qrnn_asr_decoder_hidden(h)

    def encode(self, feats_q: Tensor, lengths: Tensor | None = None) -> NativeMemory:
        """feats (1, T, F) int8 (or (T, F)); lengths, if given, (1,) == T -> the utterance's memory."""
        if feats_q.dim() == 3:
            if feats_q.shape[0] != 1:
                raise ValueError(
                    f"the native recognizer encodes one utterance at a time, got a batch of {feats_q.shape[0]}"
                )
            feats_q = feats_q[0]
        if lengths is not None:
            feats_q = feats_q[: int(lengths.reshape(-1)[0])]
        if feats_q.dtype != torch.int8:
            raise TypeError(f"features must be int8 (quantize_features), got {feats_q.dtype}")
        feats_q = feats_q.contiguous()
        handle = self._lib.qrnn_asr_encode(self._handle, feats_q.data_ptr(), feats_q.shape[0], feats_q.shape[1])
        if not handle:
            raise _error(self._lib)
        return NativeMemory(self._lib, handle)

    def keys(self, memory: NativeMemory) -> Tensor:
        """(1, T', encoder_dim) int8: the encoder output."""
        keys = torch.empty(memory.frames, self.encoder_dim, dtype=torch.int8)
        self._lib.qrnn_asr_keys(self._handle, memory.handle, keys.data_ptr())
        return keys.unsqueeze(0)

    def ctc_logits(self, memory: NativeMemory) -> Tensor:
        """(1, T', V) int32 CTC logits at 2^-logit_frac."""
        logits = torch.empty(memory.frames, self.vocab_size, dtype=torch.int32)
        if self._lib.qrnn_asr_ctc_logits(self._handle, memory.handle, logits.data_ptr()):
            raise _error(self._lib)
        return logits.unsqueeze(0)

    def init_state(self, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        shape = (1, batch_size, self.decoder_hidden)
        return [
            (torch.zeros(shape, dtype=torch.int8), torch.zeros(shape, dtype=torch.int16))
            for _ in range(self.decoder_layers)
        ]

    def decode_step(
        self, tokens: Tensor, state: list[tuple[Tensor, Tensor]], memory: NativeMemory
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Previous tokens (N,) int64 -> (logits (N, V) int32 at 2^-logit_frac, new state), as IntegerASRModel."""
        n = tokens.shape[0]
        h = torch.cat([layer[0].to(torch.int8) for layer in state]).contiguous()  # (L, N, H)
        c = torch.cat([layer[1].to(torch.int16) for layer in state]).contiguous()
        tokens = tokens.to(torch.int64).contiguous()
        logits = torch.empty(n, self.vocab_size, dtype=torch.int32)
        if self._lib.qrnn_asr_decode_step(
            self._handle, memory.handle, n, tokens.data_ptr(), h.data_ptr(), c.data_ptr(), logits.data_ptr()
        ):
            raise _error(self._lib)
        return logits, [(h[i : i + 1], c[i : i + 1]) for i in range(self.decoder_layers)]

    def greedy(self, memory: NativeMemory, bos: int, eos: int, max_len: int) -> list[int]:
        """Argmax decoding in C from ``bos``: the tokens before ``eos``, at most ``max_len``."""
        out = torch.empty(max(1, max_len), dtype=torch.int64)
        count = self._lib.qrnn_asr_greedy(self._handle, memory.handle, bos, eos, max_len, out.data_ptr())
        if count < 0:
            raise _error(self._lib)
        return out[:count].tolist()

    def ctc_best_path(self, memory: NativeMemory, blank: int) -> list[int]:
        """Best-path CTC decoding in C (app.decode.search.ctc_greedy_search): each frame's argmax, repeats merged,
        ``blank`` dropped."""
        out = torch.empty(max(1, memory.frames), dtype=torch.int64)
        count = self._lib.qrnn_asr_ctc_best_path(self._handle, memory.handle, blank, out.data_ptr())
        if count < 0:
            raise _error(self._lib)
        return out[:count].tolist()
