"""Benchmarks: ratios measured side by side in one run (never timed assertions in tests).

    python -m app.bench engine [--sizes small medium large] [--threads 1 2] [--out outputs/bench/engine.json]
        the LSTM LM (vocab 10k, tied, full-vocabulary logits): next-token latency at batch 1 and throughput at
        batch 20, each method with 1 and 2 threads, against the runtimes a user would deploy:
        torch float nn.LSTM (with the faster of oneDNN on / off, measured), torch quantize_dynamic int8,
        ONNX Runtime float and ONNX Runtime int8 (onnxruntime.quantization.quantize_dynamic; its op types are
        printed), our integer engine in C (app.engine.native: int8 weights; DenseShift 3-bit codes read packed
        or decoded to int8) and the torch-op integer engine it must equal (the readable specification).
        Speed-ups are against the best float row of the same size and batch (any runtime, any thread count).
        Needs the bench extra: pip install -e '.[bench]'.
    python -m app.bench asr [--seconds 2.0] [--threads 1 2]
        speech recognition latency of one utterance (encoder + a fixed number of greedy decoder steps) for the
        float model=small recognizer (torch with oneDNN on and off, ONNX Runtime) and its integer engine (iRNN)
        in C and with torch ops.
    python -m app.bench train [--size small]
        training tokens/s of the float model and the irnn QAT model of the same configuration.

Methods are interleaved per round (each round times every method once), and the median of the per-round
times is reported; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.engine.checkpoint import save_integer_checkpoint
from app.models.lm import LSTMLanguageModel
from app.runs.directory import machine_text

SIZES = {  # hidden = embed of the LM presets of conf/model (2 layers, tied)
    "small": 200,
    "medium": 650,
    "large": 1500,
}
VOCAB = 10_000
DENSESHIFT_BITS = 3  # the 3-bit codes {+-1, +-2, +-4, +-8} of quant=irnn_denseshift
# method names: the rows of the table and the "method" key of the JSON rows
FLOAT, DYNAMIC = "torch float nn.LSTM", "torch quantize_dynamic int8"
ORT_FLOAT, ORT_INT8 = "ONNX Runtime float", "ONNX Runtime int8"
IRNN, IRNN_TORCH = "integer engine", "integer engine (torch ops)"
IRNN_AVX2 = "integer engine (AVX2 kernels)"  # what a CPU without AVX-512 VNNI runs (this one picks VNNI)
PACKED, INT8_DECODE = "DenseShift packed 3-bit", "DenseShift int8 decode"
FLOAT_METHODS = (FLOAT, ORT_FLOAT)
# DenseShift rows also carry {"weight_bits": 3, "weight_path": ...}: how the runtime reads the codes
WEIGHT_PATHS = {PACKED: "packed_3bit", INT8_DECODE: "int8_decode"}
SLOW_METHODS = {IRNN_TORCH: ("small",)}  # the torch-op specification is timed on the small model only


class PlainLM(nn.Module):
    """The float LM with stock torch layers, so that quantize_dynamic and the ONNX export recognise them."""

    def __init__(self, model: LSTMLanguageModel):
        super().__init__()
        emb, hid = model.embedding.weight.shape[1], model.hidden_dim
        self.embedding = nn.Embedding(model.vocab_size, emb)
        self.lstm = nn.LSTM(emb, hid, model.num_layers, batch_first=True)
        self.decoder = nn.Linear(hid, model.vocab_size)
        self.load_state_dict(model.state_dict(), strict=False)

    def forward(self, tokens, state=None):
        out, state = self.lstm(self.embedding(tokens), state)
        return self.decoder(out), state


class TorchThreads:
    """Runs a torch model with a given intra-op thread count (and oneDNN on or off)."""

    def __init__(self, model, threads: int, onednn: bool | None = None):
        self.model, self.threads, self.onednn = model, threads, onednn

    def __call__(self, tokens, state=None):
        torch.set_num_threads(self.threads)
        flags = torch.backends.mkldnn.flags(enabled=self.onednn) if self.onednn is not None else nullcontext()
        with flags:
            return self.model(tokens, state)


def _calibrated_qat(hidden: int, quant: dict, calibration: torch.Tensor) -> LSTMLanguageModel:
    torch.manual_seed(0)
    qat = LSTMLanguageModel(VOCAB, hidden, hidden, 2, 0.0, True, quant)
    with torch.no_grad():
        qat.train()
        qat(calibration)  # sets the activation observers (one batch of real-shaped tokens)
    return qat.eval()


def _run_steps(model, tokens: torch.Tensor):
    """The timed work: ``tokens.shape[1]`` next-token steps with the state carried, full-vocabulary logits."""

    def fn():
        state = None
        for t in range(tokens.shape[1]):
            _, state = model(tokens[:, t : t + 1], state)

    return fn


def _faster_onednn(model: nn.Module, tokens: torch.Tensor) -> bool:
    """Whether torch's float LSTM runs faster with oneDNN enabled on this machine (both timed here)."""
    times = {}
    for enabled in (True, False):
        fn = _run_steps(TorchThreads(model, torch.get_num_threads(), enabled), tokens)
        times[enabled] = min(_time(fn, 0.2) for _ in range(3))
    return times[True] <= times[False]


def _models(size: str, hidden: int, threads: list[int], calibration: torch.Tensor, workdir: Path):
    """{(method, threads): callable ``model(tokens (B, 1), state) -> (logits, state)``} and notes."""
    from app.engine.checkpoint import load_integer_checkpoint
    from app.engine.native import NativeLanguageModel
    from app.reporting import onnx_peers

    vocab = [str(i) for i in range(VOCAB)]
    qat = _calibrated_qat(hidden, {"mode": "irnn"}, calibration)
    denseshift = _calibrated_qat(hidden, {"mode": "irnn_denseshift", "weight_bits": DENSESHIFT_BITS}, calibration)
    paths = {
        "irnn": workdir / f"{size}-irnn.int.safetensors",
        "denseshift": workdir / f"{size}-denseshift.int.safetensors",
    }
    save_integer_checkpoint(paths["irnn"], qat.export_integer(vocab), "lm", vocab, {})
    save_integer_checkpoint(paths["denseshift"], denseshift.export_integer(vocab), "lm", vocab, {})
    plain = PlainLM(qat).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(PlainLM(qat), {nn.LSTM, nn.Linear}, dtype=torch.qint8).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onednn = _faster_onednn(plain, calibration[:1, :8])
    notes = {"torch_onednn": "on" if onednn else "off"}
    models = {}
    for n in threads:
        models[FLOAT, n] = TorchThreads(plain, n, onednn)
        models[DYNAMIC, n] = TorchThreads(dynamic, n)
        ort = onnx_peers.ort_lm_methods(plain, n, workdir / f"{size}-onnx")
        models[ORT_FLOAT, n], models[ORT_INT8, n] = ort[ORT_FLOAT], ort[ORT_INT8]
        notes["ort_int8_op_types"] = onnx_peers.op_types(ort[ORT_INT8])
        models[IRNN, n] = NativeLanguageModel(paths["irnn"], threads=n)
        if models[IRNN, n].isa == "avx512vnni":
            models[IRNN_AVX2, n] = NativeLanguageModel(paths["irnn"], threads=n, isa="avx2")
        models[PACKED, n] = NativeLanguageModel(paths["denseshift"], threads=n, shift="packed")
        models[INT8_DECODE, n] = NativeLanguageModel(paths["denseshift"], threads=n, shift="int8")
        if size in SLOW_METHODS[IRNN_TORCH]:
            models[IRNN_TORCH, n] = TorchThreads(load_integer_checkpoint(paths["irnn"])[0], n)
    notes["native_kernels"] = models[IRNN, threads[0]].isa
    notes["native_weight_bytes"] = {m: models[m, threads[0]].weight_bytes for m in (IRNN, PACKED, INT8_DECODE)}
    with torch.inference_mode():
        for model in models.values():  # one-time work out of the timings: libraries, sessions, sessions' buffers
            _run_steps(model, calibration[:1, :2])()
    return models, notes


def _time(fn, min_seconds: float = 0.3, warmed_up: bool = False) -> float:
    """Seconds per call of ``fn``: a warm-up call, then calls until ``min_seconds`` have passed.

    ``warmed_up``: fn's one-time costs (kernels, caches) are already paid, so a first call that lasts
    ``min_seconds`` is the measurement (slow rows take seconds per call).
    """
    start = time.perf_counter()
    fn()
    if warmed_up and time.perf_counter() - start >= min_seconds:
        return time.perf_counter() - start
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / count


def bench_engine(sizes: list[str], threads: list[int], rounds: int, out: Path) -> dict:
    torch.set_num_threads(max(threads))
    results = {"machine": machine_text("cpu"), "threads": threads, "rows": [], "notes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            hidden = SIZES[size]
            models, notes = _models(size, hidden, threads, torch.randint(0, VOCAB, (20, 35)), Path(tmp))
            results["notes"][size] = notes
            for batch, steps, label in ((1, 20, "latency_ms_per_token"), (20, 35, "tokens_per_s")):
                tokens = torch.randint(0, VOCAB, (batch, steps))
                fns = {key: _run_steps(model, tokens) for key, model in models.items()}
                per_round = {key: [] for key in fns}
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch's note on TF32 with oneDNN, which does not apply to a CPU
                    for _ in range(rounds):
                        for key, fn in fns.items():
                            time.sleep(0.02)
                            per_round[key].append(_time(fn, warmed_up=True))
                seconds = {key: statistics.median(times) for key, times in per_round.items()}
                best_float = min(seconds[key] for key in seconds if key[0] in FLOAT_METHODS)
                best_int8 = min(seconds[key] for key in seconds if key[0] == ORT_INT8)
                for (method, n), sec in seconds.items():
                    row = {"size": size, "hidden": hidden, "batch": batch, "method": method, "threads": n}
                    row[label] = sec / steps * 1e3 if batch == 1 else batch * steps / sec
                    row["speedup_vs_best_float"] = best_float / sec
                    row["speedup_vs_float"] = row["speedup_vs_best_float"]  # the key app.report reads
                    row["speedup_vs_ort_int8"] = best_int8 / sec
                    if method == FLOAT:
                        row["setting"] = f"oneDNN {notes['torch_onednn']}"
                    if method in WEIGHT_PATHS:
                        row.update(weight_bits=DENSESHIFT_BITS, weight_path=WEIGHT_PATHS[method])
                    results["rows"].append(row)
            del models
    _print_engine(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


def _print_engine(results: dict) -> None:
    print(f"\n{results['machine']}")
    for size, notes in results["notes"].items():
        print(
            f"{size}: torch float LSTM with oneDNN {notes['torch_onednn']} (the faster here); native kernels "
            f"{notes['native_kernels']}; ONNX Runtime int8 op types: {', '.join(notes['ort_int8_op_types'])}"
        )
    print(
        f"{'size':7} {'batch':>5} {'method':28} {'thr':>3} {'ms/token':>9} {'tokens/s':>9} {'x best float':>12} {'x ORT int8':>10}"
    )
    for r in results["rows"]:
        ms = f"{r['latency_ms_per_token']:.3f}" if "latency_ms_per_token" in r else ""
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
        print(
            f"{r['size']:7} {r['batch']:>5} {r['method']:28} {r['threads']:>3} {ms:>9} {tps:>9} "
            f"{r['speedup_vs_best_float']:>12.2f} {r['speedup_vs_ort_int8']:>10.2f}"
        )


def bench_train(size: str, rounds: int, batch: int, steps: int, out: Path) -> dict:
    hidden = SIZES[size]
    tokens = torch.randint(0, VOCAB, (batch, steps + 1))
    runs = {}
    for mode in ("float", "irnn"):
        torch.manual_seed(0)
        model = LSTMLanguageModel(VOCAB, hidden, hidden, 2, 0.0, True, {"mode": mode}).train()
        optim = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(model=model, optim=optim):
            logits, _ = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
            optim.zero_grad()
            loss.backward()
            optim.step()

        runs[mode] = step
    per_round = {mode: [] for mode in runs}
    for _ in range(rounds):
        for mode, fn in runs.items():
            time.sleep(0.05)
            per_round[mode].append(_time(fn, 1.0))
    slowdown = statistics.median(q / f for f, q in zip(per_round["float"], per_round["irnn"]))
    result = {
        "machine": machine_text("cpu"),
        "size": size,
        "batch": batch,
        "bptt": steps,
        "float_tokens_per_s": batch * steps / statistics.median(per_round["float"]),
        "irnn_tokens_per_s": batch * steps / statistics.median(per_round["irnn"]),
        "irnn_slowdown": slowdown,
    }
    print(f"\n{result['machine']}")
    print(
        f"train {size} batch {batch} x bptt {steps}: float {result['float_tokens_per_s']:.0f} tok/s, "
        f"irnn QAT {result['irnn_tokens_per_s']:.0f} tok/s -> QAT is {slowdown:.2f}x slower"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


ASR_TOKENS = 15  # decoder steps per utterance (about a 6-word synthetic sentence with the 256-piece tokenizer)


def bench_asr(seconds: float, threads: list[int], rounds: int, out: Path) -> dict:
    """One utterance of ``seconds`` (random unit-variance fbank-like features: the cost does not depend on
    the values): encode it, then ASR_TOKENS greedy steps; float model=small (torch with oneDNN on and off, and
    ONNX Runtime) vs its integer engine in C (app.engine.native: encoder and greedy search) and with torch ops,
    1 and 2 threads."""
    from omegaconf import OmegaConf

    from app.engine.native import NativeASRModel
    from app.export.asr import quantize_features
    from app.models.asr import build_asr

    preset = {
        "name": "small",
        "asr": OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "conf/model/small.yaml").asr),
    }
    frames = int(seconds * 100)
    feats, lengths = torch.randn(1, frames, 80), torch.tensor([frames])
    models = {}
    for mode in ("float", "irnn"):
        torch.manual_seed(0)
        model = build_asr(preset, {"name": mode, "mode": mode}, 80, 256)
        if mode == "irnn":  # calibrate the activation grids once, as QAT does
            with torch.no_grad():
                model.train()(
                    torch.randn(4, frames, 80), torch.full((4,), frames), torch.randint(4, 256, (4, ASR_TOKENS))
                )
        models[mode] = model.eval()
    engine = models["irnn"].export_integer()
    feats_q = quantize_features(feats, engine.feat_frac)

    def float_fn(n: int, onednn: bool):
        def fn():
            torch.set_num_threads(n)
            with torch.backends.mkldnn.flags(enabled=onednn):
                encoded = models["float"].encode(feats, lengths)
                tokens, state = torch.tensor([2]), None
                for _ in range(ASR_TOKENS):
                    logits, state = models["float"].decode_step(tokens, state, encoded.memory)
                    tokens = logits.argmax(-1)

        return fn

    def torch_ops_fn(n: int):
        def fn():
            torch.set_num_threads(n)
            memory = engine.encode(feats_q, lengths)
            tokens, state = torch.tensor([2]), engine.init_state(1)
            for _ in range(ASR_TOKENS):
                logits, state = engine.decode_step(tokens, state, memory)
                tokens = logits.argmax(-1)

        return fn

    def ort_fn(asr):
        def fn():
            encoded = asr.encode(feats, lengths)
            tokens, state = np.array([2]), None
            for _ in range(ASR_TOKENS):
                logits, state = asr.decode_step(tokens, state, encoded.memory)
                tokens = logits.argmax(-1)

        return fn

    def native_fn(native):
        def fn():
            native.greedy(native.encode(feats_q), 2, -1, ASR_TOKENS)  # eos -1: always ASR_TOKENS steps

        return fn

    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        from app.reporting import onnx_peers

        path = Path(tmp) / "asr.int.safetensors"
        save_integer_checkpoint(path, engine, "asr", None, {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation note
            onnx_files = onnx_peers.asr_onnx_files(models["float"], Path(tmp) / "onnx")
        for n in threads:
            for onednn in (True, False):
                fns[f"{FLOAT} (oneDNN {'on' if onednn else 'off'})", n] = float_fn(n, onednn)
            fns[ORT_FLOAT, n] = ort_fn(onnx_peers.OrtASR(*onnx_files, threads=n))
            fns[IRNN, n] = native_fn(NativeASRModel(path, threads=n))
            fns[IRNN_TORCH, n] = torch_ops_fn(n)
    per_round = {key: [] for key in fns}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on TF32 with oneDNN, which does not apply to a CPU
        for fn in fns.values():
            fn()
        for _ in range(rounds):
            for key, fn in fns.items():
                time.sleep(0.02)
                per_round[key].append(_time(fn, 0.5))
    seconds_of = {key: statistics.median(times) for key, times in per_round.items()}
    best_float = min(sec for (method, _), sec in seconds_of.items() if method.startswith(FLOAT) or method == ORT_FLOAT)
    result = {
        "machine": machine_text("cpu"),
        "model": "small",
        "audio_seconds": seconds,
        "decoder_steps": ASR_TOKENS,
        "rows": [],
    }
    for (method, n), sec in seconds_of.items():
        result["rows"].append(
            {
                "method": method,
                "threads": n,
                "latency_ms": 1e3 * sec,
                "real_time_factor": sec / seconds,
                "speedup_vs_best_float": best_float / sec,
                "speedup_vs_float": best_float / sec,
            }
        )
    print(f"\n{result['machine']}")
    print(f"ASR model=small, {seconds:g} s utterance + {ASR_TOKENS} greedy steps, batch 1:")
    for row in result["rows"]:
        print(
            f"  {row['method']:32} {row['threads']} thr {row['latency_ms']:8.2f} ms  RTF {row['real_time_factor']:.4f}  "
            f"x best float {row['speedup_vs_best_float']:.2f}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    engine = sub.add_parser(
        "engine", help="LM inference: torch float / int8, ONNX Runtime float / int8, our integer engine (C), DenseShift"
    )
    engine.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=sorted(SIZES))
    engine.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    engine.add_argument("--rounds", type=int, default=5)
    engine.add_argument("--out", type=Path, default=Path("outputs/bench/engine.json"))
    asr = sub.add_parser("asr", help="speech recognition latency: float model vs integer engine")
    asr.add_argument("--seconds", type=float, default=2.0, help="utterance length")
    asr.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    asr.add_argument("--rounds", type=int, default=5)
    asr.add_argument("--out", type=Path, default=Path("outputs/bench/asr.json"))
    train = sub.add_parser("train", help="training tokens/s: float vs irnn QAT")
    train.add_argument("--size", default="small", choices=sorted(SIZES))
    train.add_argument("--rounds", type=int, default=3)
    train.add_argument("--batch", type=int, default=20)
    train.add_argument("--bptt", type=int, default=35)
    train.add_argument("--out", type=Path, default=Path("outputs/bench/train.json"))
    args = parser.parse_args(argv)
    if args.what == "engine":
        if min(args.threads) < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        bench_engine(args.sizes, args.threads, args.rounds, args.out)
    elif args.what == "asr":
        if min(args.threads) < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        bench_asr(args.seconds, args.threads, args.rounds, args.out)
    else:
        bench_train(args.size, args.rounds, args.batch, args.bptt, args.out)


if __name__ == "__main__":
    main()
