"""trainer=ddp: two CPU processes (gloo) train in lockstep and agree on the loss; the integer check on rank 0
evaluates what both ranks evaluated."""

import json
from pathlib import Path

from tests.conftest import ROOT, run_script
from tests.test_train_asr import _overrides as asr_overrides


def test_two_cpu_ranks_keep_identical_weights_and_agree_on_the_loss(ptb_overrides: list[str], tmp_path: Path) -> None:
    overrides = [o for o in ptb_overrides if not o.startswith("trainer.")]
    result = run_script(
        "tests/ddp_probe.py",
        *overrides,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "quant=irnn",
        f"hydra.run.dir={tmp_path}",
        timeout=300,
        env={"PYTHONPATH": str(ROOT)},  # the probe imports train.py
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = {}
    for line in result.stdout.splitlines():
        if line.startswith("RANK_RESULT "):
            record = json.loads(line.removeprefix("RANK_RESULT "))
            ranks[record["rank"]] = record
    assert sorted(ranks) == [0, 1], result.stdout[-3000:]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # gradients were all-reduced
    assert ranks[0]["train_ppl"] == ranks[1]["train_ppl"]
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]
    assert ranks[0]["val_tokens"] == 2 * 2 * 8 * 35  # both ranks' batches count: 2 batches of 8x35 each
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "checkpoints" / "best.ckpt").is_file()
    integer = json.loads((tmp_path / "metrics.json").read_text())["integer"]  # rank 0 evaluates both ranks' rows
    # the ranks' int32 logits equal the engine's; both sides score them in float64, the ranks' sums added in
    # another order than the engine's: float64 rounding, far below what one logit LSB moves
    assert abs(integer["val_ppl_rel_diff_vs_qat"]) < 1e-12 and abs(integer["test_ppl_rel_diff_vs_qat"]) < 1e-12


def test_asr_under_two_ranks_tests_every_set_and_the_integer_engine_decodes_the_same_utterances(asr_root, tmp_path):
    """task=asr quant=irnn under DDP: every test set, even one smaller than a batch, gives each rank a share;
    rank 0 gathers both shares, and the integer engine decodes both shares' utterances to the same words."""
    result = run_script(
        "train.py",
        *asr_overrides(asr_root, "quant=irnn"),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["test_wer"]) == ["synth", "fsdd", "yesno", "pocketsphinx"]
    assert metrics["integer"]["test_wer"] == metrics["test_wer"]
    # limit_test_batches=1 and 4 utterances a batch: both ranks' first batch of each set (pocketsphinx: 11
    # utterances, shares of 6 and 5; yesno: 3, shares of 2 and 1)
    for folder in ("decoded", "decoded_integer"):
        rows = {name: (tmp_path / folder / f"{name}.jsonl").read_text().splitlines() for name in metrics["test_wer"]}
        assert len(rows["pocketsphinx"]) == 8 and len(rows["yesno"]) == 3 and len(rows["fsdd"]) == 5
    assert (tmp_path / "decoded" / "pocketsphinx.jsonl").read_text() == (
        tmp_path / "decoded_integer" / "pocketsphinx.jsonl"
    ).read_text()
