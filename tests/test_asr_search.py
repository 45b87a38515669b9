"""Joint CTC/attention search: the CTC prefix scorer against brute force over every alignment, and F.ctc_loss."""
import itertools
import math

import torch
import torch.nn.functional as F

from app.asr_search import CTCPrefixScorer

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
            total = float(torch.logaddexp(torch.tensor(total, dtype=torch.float64), sum(log_probs[t, label] for t, label in enumerate(path))))
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
            assert math.isclose(score, _brute_force(log_probs, prefix + [label], exact=False), rel_tol=1e-9, abs_tol=1e-12)
        exact = _brute_force(log_probs, prefix, exact=True)
        assert math.isclose(float(psi[2]), exact, rel_tol=1e-9)
        if prefix:  # <eos> scores the whole sequence: minus torch's CTC loss
            loss = F.ctc_loss(log_probs.unsqueeze(1), torch.tensor([prefix]), torch.tensor([5]), torch.tensor([len(prefix)]),
                              blank=BLANK, reduction="sum")  # fmt: skip
            assert math.isclose(float(psi[2]), -float(loss), rel_tol=1e-9)
        assert psi[3] == -math.inf  # blank is never a label


def test_more_labels_than_frames_score_minus_infinity():
    log_probs = F.log_softmax(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    psi = _extend_along(CTCPrefixScorer(log_probs, blank=BLANK, eos=EOS), [1, 2, 1], [2, EOS])
    assert (psi == -math.inf).all()
