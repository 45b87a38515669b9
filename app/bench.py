"""Benchmarks: ratios measured side by side in one run (never timed assertions in tests).

    python -m app.bench engine [--sizes small medium] [--out outputs/bench/engine.json]
        next-token latency at batch 1 and throughput at batch 20 for the float nn.LSTM LM,
        torch's dynamic int8 LSTM (quantize_dynamic, fbgemm/x86), our integer engine (iRNN, int8
        weights) and the DenseShift integer engine (irnn_denseshift, 3-bit codes) with each weight path:
        the multiplication-free shift-and-add kernel and the codes decoded to int8 for the int8 GEMM.
    python -m app.bench asr [--seconds 2.0]
        speech recognition latency of one utterance (encoder + a fixed number of greedy decoder steps)
        for the float model=small recognizer and its integer engine (iRNN).
    python -m app.bench train [--size small]
        training tokens/s of the float model and the irnn QAT model of the same configuration.

Methods are interleaved per round (each round times every method once), and the median of
the per-round ratios is reported, as in shared/research/env.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from app.engine.shift import use_shift_kernel
from app.models.lm import LSTMLanguageModel
from app.runs import machine_text

SIZES = {  # (embed = hidden, layers): the LM presets of conf/model
    "small": 200,
    "medium": 650,
    "large": 1500,
}
VOCAB = 10_000
DENSESHIFT_BITS = 3  # the 3-bit codes {+-1, +-2, +-4, +-8} of quant=irnn_denseshift
# method names: the rows of the table and the "method" key of the JSON rows
FLOAT, DYNAMIC, IRNN = "float nn.LSTM", "quantize_dynamic int8", "integer engine"
SHIFT_KERNEL, INT8_DECODE = "DenseShift shift-add", "DenseShift int8 decode"
# DenseShift rows also carry {"weight_bits": 3, "weight_path": ...}: which kernel runs the codes
WEIGHT_PATHS = {SHIFT_KERNEL: "shift_kernel", INT8_DECODE: "int8_decode"}


class PlainLM(nn.Module):
    """The float LM with stock torch layers, so that quantize_dynamic recognises them."""

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


def _calibrated_qat(hidden: int, quant: dict, calibration: torch.Tensor) -> LSTMLanguageModel:
    torch.manual_seed(0)
    qat = LSTMLanguageModel(VOCAB, hidden, hidden, 2, 0.0, True, quant)
    with torch.no_grad():
        qat.train()
        qat(calibration)  # sets the embedding observer (one batch of real-shaped tokens)
    return qat.eval()


def _models(hidden: int, calibration: torch.Tensor) -> dict[str, nn.Module]:
    """{method: model} for every method, each called as ``model(tokens (B, 1), state) -> (logits, state)``."""
    qat = _calibrated_qat(hidden, {"mode": "irnn"}, calibration)
    vocab = [str(i) for i in range(VOCAB)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(PlainLM(qat), {nn.LSTM, nn.Linear}, dtype=torch.qint8).eval()
    denseshift = _calibrated_qat(hidden, {"mode": "irnn_denseshift", "weight_bits": DENSESHIFT_BITS}, calibration)
    shift_engine = denseshift.export_integer(vocab)
    use_shift_kernel(shift_engine)  # the same codes through the multiplication-free kernel
    models = {
        FLOAT: PlainLM(qat).eval(),
        DYNAMIC: dynamic,
        IRNN: qat.export_integer(vocab),
        SHIFT_KERNEL: shift_engine,
        INT8_DECODE: denseshift.export_integer(vocab),  # engine default: codes decoded to int8 once, at export
    }
    with torch.inference_mode():
        for model in models.values():  # one-time work out of the timings: int8 GEMM library, shift plans
            model(calibration[:1, :1])
    return models


def _step_fns(models: dict[str, nn.Module], batch: int, steps: int):
    tokens = torch.randint(0, VOCAB, (batch, steps))

    def run(model):
        def fn():
            state = None
            for t in range(steps):
                _, state = model(tokens[:, t : t + 1], state)
        return fn

    return {name: run(model) for name, model in models.items()}


def _time(fn, min_seconds: float = 0.3, warmed_up: bool = False) -> float:
    """Seconds per call of ``fn``: a warm-up call, then calls until ``min_seconds`` have passed.

    ``warmed_up``: fn's one-time costs (kernels, caches) are already paid, so a first call that lasts
    ``min_seconds`` is the measurement (the DenseShift shift-add rows take seconds per call).
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


def bench_engine(sizes: list[str], rounds: int, out: Path) -> dict:
    results = {"machine": machine_text("cpu"), "rows": []}
    for size in sizes:
        hidden = SIZES[size]
        models = _models(hidden, torch.randint(0, VOCAB, (20, 35)))
        for batch, steps, label in ((1, 20, "latency_ms_per_token"), (20, 35, "tokens_per_s")):
            fns = _step_fns(models, batch, steps)
            per_round = {name: [] for name in fns}
            with torch.inference_mode():
                for _ in range(rounds):
                    for name, fn in fns.items():
                        time.sleep(0.05)
                        per_round[name].append(_time(fn, warmed_up=True))
            base = per_round[FLOAT]
            for name, times in per_round.items():
                seconds = statistics.median(times)
                value = seconds / steps * 1e3 if batch == 1 else batch * steps / seconds
                speedup = statistics.median(b / t for b, t in zip(base, times))
                row = {"size": size, "hidden": hidden, "batch": batch, "method": name, label: value}
                row["speedup_vs_float"] = speedup
                if name in WEIGHT_PATHS:
                    row.update(weight_bits=DENSESHIFT_BITS, weight_path=WEIGHT_PATHS[name])
                results["rows"].append(row)
    _print_engine(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


def _print_engine(results: dict) -> None:
    print(f"\n{results['machine']}")
    print(f"{'size':8} {'batch':>5} {'method':24} {'ms/token':>10} {'tokens/s':>10} {'x float':>8}")
    for r in results["rows"]:
        ms = f"{r['latency_ms_per_token']:.3f}" if "latency_ms_per_token" in r else ""
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
        print(f"{r['size']:8} {r['batch']:>5} {r['method']:24} {ms:>10} {tps:>10} {r['speedup_vs_float']:>8.2f}")


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


def bench_asr(seconds: float, rounds: int, out: Path) -> dict:
    """One utterance of ``seconds`` (random unit-variance fbank-like features: the cost does not depend on
    the values): encode it, then ASR_TOKENS greedy steps, float model vs integer engine."""
    from omegaconf import OmegaConf

    from app.models.asr import build_asr
    from app.tasks.asr_integer import quantize_features

    preset = {"name": "small", "asr": OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/model/small.yaml").asr)}
    frames = int(seconds * 100)
    feats, lengths = torch.randn(1, frames, 80), torch.tensor([frames])
    models = {}
    for mode in ("float", "irnn"):
        torch.manual_seed(0)
        model = build_asr(preset, {"name": mode, "mode": mode}, 80, 256)
        if mode == "irnn":  # calibrate the activation grids once, as QAT does
            with torch.no_grad():
                model.train()(torch.randn(4, frames, 80), torch.full((4,), frames), torch.randint(4, 256, (4, ASR_TOKENS)))
        models[mode] = model.eval()
    engine = models["irnn"].export_integer()

    def float_fn():
        encoded = models["float"].encode(feats, lengths)
        tokens, state = torch.tensor([2]), None
        for _ in range(ASR_TOKENS):
            logits, state = models["float"].decode_step(tokens, state, encoded.memory)
            tokens = logits.argmax(-1)

    def integer_fn():
        memory = engine.encode(quantize_features(feats, engine.feat_frac), lengths)
        tokens, state = torch.tensor([2]), engine.init_state(1)
        for _ in range(ASR_TOKENS):
            logits, state = engine.decode_step(tokens, state, memory)
            tokens = logits.argmax(-1)

    fns = {FLOAT: float_fn, IRNN: integer_fn}
    per_round = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                time.sleep(0.05)
                per_round[name].append(_time(fn, 1.0))
    result = {"machine": machine_text("cpu"), "model": "small", "audio_seconds": seconds, "decoder_steps": ASR_TOKENS, "rows": []}
    for name, times in per_round.items():
        speedup = statistics.median(f / t for f, t in zip(per_round[FLOAT], times))
        result["rows"].append({"method": name, "latency_ms": 1e3 * statistics.median(times), "speedup_vs_float": speedup,
                               "real_time_factor": statistics.median(times) / seconds})  # fmt: skip
    print(f"\n{result['machine']}")
    print(f"ASR model=small, {seconds:g} s utterance + {ASR_TOKENS} greedy steps, batch 1:")
    for row in result["rows"]:
        print(f"  {row['method']:16} {row['latency_ms']:8.1f} ms  RTF {row['real_time_factor']:.3f}  x float {row['speedup_vs_float']:.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    engine = sub.add_parser(
        "engine", help="inference: float vs quantize_dynamic vs integer engine (iRNN; DenseShift shift-add and int8 decode)"
    )
    engine.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=sorted(SIZES))
    engine.add_argument("--rounds", type=int, default=5)
    engine.add_argument("--out", type=Path, default=Path("outputs/bench/engine.json"))
    asr = sub.add_parser("asr", help="speech recognition latency: float model vs integer engine")
    asr.add_argument("--seconds", type=float, default=2.0, help="utterance length")
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
        bench_engine(args.sizes, args.rounds, args.out)
    elif args.what == "asr":
        bench_asr(args.seconds, args.rounds, args.out)
    else:
        bench_train(args.size, args.rounds, args.batch, args.bptt, args.out)


if __name__ == "__main__":
    main()
