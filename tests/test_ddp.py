"""trainer=ddp: two CPU processes (gloo) train in lockstep and agree on the loss."""

import json
from pathlib import Path

from tests.conftest import ROOT, run_script


def test_two_cpu_ranks_keep_identical_weights_and_agree_on_the_loss(ptb_overrides: list[str], tmp_path: Path) -> None:
    overrides = [o for o in ptb_overrides if not o.startswith("trainer.")]
    result = run_script(
        "tests/ddp_probe.py", *overrides, "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
        "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path}", timeout=300, env={"PYTHONPATH": str(ROOT)},  # the probe imports train.py
    )  # fmt: skip
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
