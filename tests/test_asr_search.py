"""Joint CTC/attention search: the CTC prefix scorer against brute force over every alignment, and F.ctc_loss."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from app.decode.search import CTCPrefixScorer, LanguageModelFusion

BLANK, EOS = 0, 3


def _collapse(path):
    out, prev = [], None
    for label in path:
        if label != prev and label != BLANK:
            out.append(label)
        prev = label
    return out


def _brute_force(log_probs, prefix, exact):
    """log of the summed probability of every frame labelling whose CTC output starts with (or is) ``prefix``."""
    total = -math.inf
    steps, vocab = log_probs.shape
    for path in itertools.product(range(vocab), repeat=steps):
        out = _collapse(path)
        if (out == prefix) if exact else (out[: len(prefix)] == prefix):
            total = float(
                torch.logaddexp(
                    torch.tensor(total, dtype=torch.float64), sum(log_probs[t, label] for t, label in enumerate(path))
                )
            )
    return total


def _extend_along(scorer, prefix, candidates):
    """Walk the scorer along ``prefix`` one label at a time, then score ``candidates`` after it."""
    r = scorer.initial_state().unsqueeze(0)
    for i, label in enumerate(prefix):
        last = torch.tensor([prefix[i - 1] if i else -1])
        _, states = scorer.extend(r, last, torch.tensor([[label]]))
        r = states[:, 0]
    last = torch.tensor([prefix[-1] if prefix else -1])
    psi, _ = scorer.extend(r, last, torch.tensor([candidates]))
    return psi[0]


def test_prefix_scores_equal_the_sum_over_all_alignments_and_eos_gives_the_ctc_loss():
    torch.manual_seed(0)
    log_probs = F.log_softmax(torch.randn(5, 4, dtype=torch.float64) * 2, dim=-1)  # labels 1, 2; 3 is <eos>
    scorer = CTCPrefixScorer(log_probs, blank=BLANK, eos=EOS)
    for prefix in ([], [1], [2, 2], [1, 2]):
        psi = _extend_along(scorer, prefix, [1, 2, EOS, BLANK])
        for label, score in zip([1, 2], psi[:2].tolist()):
            assert math.isclose(
                score, _brute_force(log_probs, prefix + [label], exact=False), rel_tol=1e-9, abs_tol=1e-12
            )
        exact = _brute_force(log_probs, prefix, exact=True)
        assert math.isclose(float(psi[2]), exact, rel_tol=1e-9)
        if prefix:  # <eos> scores the whole sequence: minus torch's CTC loss
            loss = F.ctc_loss(
                log_probs.unsqueeze(1),
                torch.tensor([prefix]),
                torch.tensor([5]),
                torch.tensor([len(prefix)]),
                blank=BLANK,
                reduction="sum",
            )
            assert math.isclose(float(psi[2]), -float(loss), rel_tol=1e-9)
        assert psi[3] == -math.inf  # blank is never a label


def test_more_labels_than_frames_score_minus_infinity():
    log_probs = F.log_softmax(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    psi = _extend_along(CTCPrefixScorer(log_probs, blank=BLANK, eos=EOS), [1, 2, 1], [2, EOS])
    assert (psi == -math.inf).all()


def _integer_lm(vocab):
    from app.models.lm import build_lm

    torch.manual_seed(0)
    model = build_lm(
        {"name": "t", "lm": {"embed_dim": 8, "hidden_dim": 8, "num_layers": 1, "dropout": 0.0, "tie_weights": True}},
        {"name": "irnn", "mode": "irnn"},
        len(vocab),
    ).eval()
    with torch.no_grad():
        model(torch.zeros(2, 3, dtype=torch.int64))  # calibrate the activation grids
    return model.export_integer(vocab)


def test_lm_fusion_scores_each_asr_token_by_its_piece_and_refuses_an_lm_of_other_words():
    pieces = ["<pad>", "<unk>", "<s>", "</s>", "▁a", "▁b", "c"]  # ASR ids: pad 0, unk 1, bos 2, eos 3
    engine = _integer_lm(["<unk>", "<eos>", "c", "▁b", "▁a"])
    fusion = LanguageModelFusion.build(engine, pieces, bos=2, eos=EOS, weight=0.5)
    assert fusion.to_lm.tolist() == [0, 0, 1, 1, 4, 3, 2]  # bos/eos -> <eos>; pad/unk -> <unk>
    state = fusion.init_state(2)
    scores, state = fusion.step(torch.tensor([2, 4]), state)
    logits, _ = engine(torch.tensor([[1], [4]]), engine.init_state(2))
    expected = F.log_softmax(logits[:, 0].double() * 2.0**-engine.logit_frac, dim=-1)
    assert torch.equal(scores[:, 4], expected[:, 4]) and torch.equal(scores[:, EOS], expected[:, 1])
    assert state[0].shape[1] == 2 and fusion.select_state(state, torch.tensor([1, 1, 0]))[0].shape[1] == 3
    other = _integer_lm(["<unk>", "<eos>", "the", "cat", "sat"])
    with pytest.raises(ValueError, match="not words of the LM"):
        LanguageModelFusion.build(other, pieces, bos=2, eos=EOS, weight=0.5)
