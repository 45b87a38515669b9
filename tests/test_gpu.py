"""QAT on a CUDA GPU computes what the integer engine computes on the CPU.

Deselected by default (marker ``gpu``; CI has no GPU): run them where a GPU is with ``pytest -m gpu``.
Training on a GPU runs the fake-quantized model with CUDA kernels (cuBLAS GEMMs, the int8 GEMM op's float64
CUDA form, lookup tables moved to the device); the integer checkpoint it exports must still give the QAT
model's integers, word for word in ASR and logit for logit in the LM, and the checkpoint must decode the
same words when the QAT model runs on the CPU.
"""

import pytest
import torch

from app.engine.checkpoint import load_integer_checkpoint
from app.engine.guard import IntegerOnlyGuard
from evaluate import evaluate, load_task
from tests.conftest import compose_config
from tests.test_train_asr import _overrides as asr_overrides
from train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)"),
]


def test_irnn_asr_trained_on_a_gpu_decodes_the_same_words_on_the_integer_engine(asr_root, tmp_path):
    metrics = train(compose_config("train", asr_overrides(asr_root, "quant=irnn", "trainer=gpu"), tmp_path / "run"))
    assert "(GPU)" in metrics["hardware"]
    integer = metrics["integer"]
    assert integer["test_wer"] == metrics["test_wer"]
    assert all(diff == 0 for diff in integer["test_wer_abs_diff_vs_qat"].values())
    for set_name in metrics["test_wer"]:
        assert (tmp_path / "run" / "decoded" / f"{set_name}.jsonl").read_text() == (
            tmp_path / "run" / "decoded_integer" / f"{set_name}.jsonl"
        ).read_text()
    # the QAT model of that checkpoint on the CPU: the same words as on the GPU
    common = [o for o in asr_overrides(asr_root) if not o.startswith(("model=", "trainer.limit_train", "task.module"))]
    cpu = evaluate(
        compose_config("evaluate", [*common, f"ckpt={metrics['checkpoint']}", "beam_size=2"], tmp_path / "c")
    )
    assert "(GPU)" not in cpu["hardware"] and cpu["test_wer"] == metrics["test_wer"]
    for set_name in metrics["test_wer"]:
        assert (tmp_path / "c" / "decoded" / f"{set_name}.jsonl").read_text() == (
            tmp_path / "run" / "decoded" / f"{set_name}.jsonl"
        ).read_text()


@pytest.mark.parametrize("quant", ["irnn", "irnn_denseshift"])
def test_lm_qat_logits_on_a_gpu_equal_the_integer_engines(quant, ptb_overrides, tmp_path):
    from hydra.utils import instantiate

    metrics = train(compose_config("train", [*ptb_overrides, f"quant={quant}", "trainer=gpu"], tmp_path))
    assert "(GPU)" in metrics["hardware"] and abs(metrics["integer"]["test_ppl_rel_diff_vs_qat"]) < 1e-12
    task = load_task(torch.load(metrics["checkpoint"], weights_only=False), metrics["checkpoint"]).eval().cuda()
    datamodule = instantiate(compose_config("train", [*ptb_overrides, f"quant={quant}"]).data)
    datamodule.prepare_data()
    datamodule.setup("test")
    engine, _ = load_integer_checkpoint(tmp_path / "model.int.safetensors")
    qat_state = int_state = None
    for index, (inputs, _) in zip(range(3), datamodule.test_dataloader()):
        with torch.no_grad():
            logits, qat_state = task.model(inputs.cuda(), qat_state)
        with IntegerOnlyGuard():
            logits_int, int_state = engine(inputs, int_state)
        scaled = logits.double().cpu() * 2**engine.logit_frac
        assert torch.equal(scaled.round(), scaled), "QAT logits off the int32 grid"
        assert torch.equal(logits_int.long(), scaled.long()), index
