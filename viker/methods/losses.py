"""Model-agnostic loss math shared by every unlearning method (see docs/design.md).

Conventions
-----------
* ``logits`` are ``(B, T, V)`` straight from a causal LM.
* ``labels`` are ``(B, T)`` in Hugging Face convention: *not* shifted, and ``IGNORE`` (-100) marks every
  position that is not an answer token (prompt, image placeholders, padding).
* The shift happens in exactly one place, :func:`shift`. Every other function that takes ``(logits,
  labels)`` goes through it, so no caller can shift twice or forget to shift.
* Functions that take ``(N, V)`` tensors work on answer positions that were already gathered (see
  :func:`gather_answer_positions`); ``ref_probs`` is always a probability vector (a cached R̂ or the
  frozen model's softmax), never logits.
* Half-precision logits are upcast to float32 before softmax/log-softmax: the losses sum tens of
  thousands of vocabulary terms and bf16 rounding is visible there. float64 stays float64 (tests).

Reconstructed choices (the paper gives the mechanism but not every formula; see docs/design.md, "ViKeR:
what is ours"): the ViKeR loss form ``log Q(y) + λ·D(R̂ ‖ Q)`` and top-k storage of R̂ are ours. The
loss's gradient reproduces the paper's stated reweighting exactly, which the unit tests check.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100

__all__ = [
    "IGNORE",
    "REGULARIZERS",
    "shift",
    "token_logprobs",
    "sequence_logprob",
    "answer_nll",
    "answer_token_nll",
    "answer_token_counts",
    "gather_answer_positions",
    "answer_window",
    "kl_to_reference",
    "jsd_to_reference",
    "cosine_to_reference",
    "entropy",
    "npo_loss",
    "dpo_loss",
    "viker_token_loss",
    "compress_topk",
    "decompress_topk",
]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32; other dtypes unchanged (float64 stays exact for tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _safe_log(p: Tensor) -> Tensor:
    """log p where p > 0 and 0 elsewhere; callers multiply by p, so 0·log 0 comes out as 0 (no NaN
    in the forward pass and no inf in the backward pass)."""
    return torch.log(torch.where(p > 0, p, torch.ones_like(p)))


# --------------------------------------------------------------------------------------------------
# answer-token bookkeeping
# --------------------------------------------------------------------------------------------------
def shift(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Align predictions with targets: the logits at position t predict the label at t+1.

    (B,T,V), (B,T) -> logits[:, :-1] (B,T-1,V), targets labels[:, 1:] (B,T-1),
    mask (targets != IGNORE) as float (B,T-1).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = (targets != IGNORE).to(_upcast(logits).dtype)
    return logits, targets, mask


def answer_token_counts(labels: Tensor) -> Tensor:
    """(B,) how many answer tokens each row has, counted after the shift, as every loss here counts them."""
    return (labels[:, 1:] != IGNORE).sum(dim=1)


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position log p(target): (B,T-1), exactly 0 at masked positions, plus the float mask."""
    logits, targets, mask = shift(logits, labels)
    keep = mask.bool()
    if not bool(keep.any()):  # no answer token: zeros that still carry the graph
        return _upcast(logits[..., 0]) * 0.0, mask
    # Only the answer positions reach the vocabulary-wide normaliser (prompt and image positions are
    # most of a multimodal sequence), and logit[y] - logsumexp avoids a second (N,V) log-softmax.
    chosen = _upcast(logits[keep])
    values = chosen.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(chosen, dim=-1)
    lp = torch.zeros(keep.shape, dtype=values.dtype, device=values.device).masked_scatter(keep, values)
    return lp, mask


def sequence_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) log p(answer | prompt): the SUM of answer-token log-probs of each sequence.

    This is the per-sequence log-likelihood NPO/DPO need; a batch-mean cross-entropy is not.
    """
    lp, _ = token_logprobs(logits, labels)
    return lp.sum(dim=-1)


def answer_nll(logits: Tensor, labels: Tensor, length_normalised: bool = True) -> Tensor:
    """Scalar NLL: mean over sequences of each sequence's mean per-token NLL (``length_normalised=False``: of
    each sequence's NLL, the sum over its tokens).

    Averaging per sequence first means a long answer counts as much as a short one instead of
    dominating the batch. Sequences with no answer tokens are skipped; if none has any, returns a
    zero that still carries the graph (so ``backward`` works).
    """
    lp, mask = token_logprobs(logits, labels)
    n_tokens = mask.sum(dim=-1)
    has_answer = n_tokens > 0
    if not bool(has_answer.any()):
        return lp.sum() * 0.0
    per_seq = -lp.sum(dim=-1) / (n_tokens.clamp_min(1.0) if length_normalised else 1.0)
    return per_seq[has_answer].mean()


def answer_token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Scalar NLL: mean over every answer token of the batch at once, as a model's own ``loss`` (and the
    published GA code, which uses it) computes it: a long answer weighs more than a short one."""
    lp, mask = token_logprobs(logits, labels)
    return -lp.sum() / mask.sum().clamp_min(1.0)


def answer_window(labels: Tensor) -> int:
    """How many trailing positions of a batch hold every logit that predicts an answer token: the
    ``logits_to_keep`` that spares the output layer the positions before the earliest answer.

    Pass the model's logits for these positions with ``labels[:, -window:]``; :func:`shift` then pairs
    them exactly as it pairs the full sequences. With left padding the window is the longest answer
    plus one; with right padding it starts one before the earliest answer in the batch."""
    answer = labels != IGNORE
    if not bool(answer.any()):
        return 1
    first = int(answer.float().argmax(dim=1)[answer.any(dim=1)].min())
    return labels.shape[1] - max(first - 1, 0)


def gather_answer_positions(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(N,V) logits at answer positions (after the shift) and their (N,) targets, row-major order
    (sequence by sequence, left to right), i.e. the order in which a cached R̂ is stored."""
    logits, targets, mask = shift(logits, labels)
    keep = mask.bool()
    return logits[keep], targets[keep]


# --------------------------------------------------------------------------------------------------
# divergences between a reference distribution R and the model Q = softmax(logits), per position
# --------------------------------------------------------------------------------------------------
def kl_to_reference(ref_probs: Tensor, logits: Tensor) -> Tensor:
    """(N,) KL(R ‖ Q) = Σ_v R(v) (log R(v) - log Q(v)), Q = softmax(logits).

    Terms with R(v) = 0 contribute exactly 0 (0·log 0 = 0), so one-hot or top-k references are safe.
    """
    log_q = F.log_softmax(_upcast(logits), dim=-1)
    r = ref_probs.to(log_q.dtype)
    terms = torch.where(r > 0, r * (_safe_log(r) - log_q), torch.zeros_like(log_q))
    return terms.sum(dim=-1)


def jsd_to_reference(ref_probs: Tensor, logits: Tensor) -> Tensor:
    """(N,) Jensen–Shannon divergence ½KL(R‖M) + ½KL(Q‖M), M = (R+Q)/2; symmetric, in [0, log 2]."""
    log_q = F.log_softmax(_upcast(logits), dim=-1)
    q = log_q.exp()
    r = ref_probs.to(log_q.dtype)
    m = 0.5 * (r + q)
    # M > 0 wherever R or Q is; the clamp only guards positions where both underflowed to 0,
    # and those positions contribute 0 either way.
    log_m = torch.log(m.clamp_min(torch.finfo(m.dtype).tiny))
    zero = torch.zeros_like(log_q)
    kl_rm = torch.where(r > 0, r * (_safe_log(r) - log_m), zero).sum(dim=-1)
    kl_qm = torch.where(q > 0, q * (log_q - log_m), zero).sum(dim=-1)
    return 0.5 * (kl_rm + kl_qm)


def cosine_to_reference(ref_probs: Tensor, logits: Tensor) -> Tensor:
    """(N,) 1 - cos(R, Q) between the probability vectors (0 when equal, at most 1 since both ≥ 0)."""
    q = F.softmax(_upcast(logits), dim=-1)
    r = ref_probs.to(q.dtype)
    return 1.0 - F.cosine_similarity(r, q, dim=-1, eps=1e-12)


def entropy(probs: Tensor) -> Tensor:
    """(N,) H(p) = -Σ p log p in nats, 0·log 0 = 0. ViKeR calls position i a key token iff H(R̂_i) > ε."""
    p = _upcast(probs)
    return -torch.xlogy(p, p).sum(dim=-1)


REGULARIZERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "kl": kl_to_reference,
    "jsd": jsd_to_reference,
    "cos": cosine_to_reference,
}


# --------------------------------------------------------------------------------------------------
# method losses
# --------------------------------------------------------------------------------------------------
def npo_loss(logp: Tensor, ref_logp: Tensor, beta: float = 0.1) -> Tensor:
    """NPO: mean over sequences of -(2/β)·log σ(-β (log p_θ(y) - log p_ref(y))).

    ``logp``/``ref_logp`` are per-sequence SUMS of answer log-probs (B,). The reference is frozen,
    so it is detached here. d/d logp = 2σ(β(logp - ref_logp)): plain GA whose step shrinks as the
    model drops below the reference.
    """
    delta = logp - ref_logp.detach().to(logp.dtype)
    return (-(2.0 / beta) * F.logsigmoid(-beta * delta)).mean()


def dpo_loss(
    logp_chosen: Tensor,
    logp_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """DPO: mean of -log σ(β((lc - rc) - (lr - rr))) over per-sequence log-likelihoods (B,).

    IdkPO = DPO with chosen = a refusal, rejected = the true answer, reference = θ_full.
    """
    margin = (logp_chosen - ref_chosen.detach()) - (logp_rejected - ref_rejected.detach())
    return (-F.logsigmoid(beta * margin)).mean()


def viker_token_loss(
    logits: Tensor,
    targets: Tensor,
    ref_probs: Tensor,
    lam: float | Tensor,
    regularizer: str = "kl",
    ga_weight: float = 1.0,
    terms: dict | None = None,
) -> Tensor:
    """ViKeR: mean over the N answer tokens of [ga_weight · log Q(y) + λ · D(R̂ ‖ Q)].

    logits (N,V) at answer positions, targets (N,), ref_probs (N,V) = R̂ (cached, constant).
    With D = KL the per-token gradient w.r.t. the logits is e_y - (1-λ)Q - λR̂ (for ga_weight = 1):
    GA damped by (1-λ) on normal tokens (R̂ ≈ e_y), amplified on key tokens wherever R̂(v) > Q(v).

    Per token the KL form is ``-Σ_v w_v log Q(v) + const`` with ``w = λR̂ - e_y``: where λR̂(y) ≥ 1 every
    weight is non-negative and the loss is a cross-entropy toward Q* = (λR̂ - e_y)/(λ-1), its minimum (a
    resting point); where λR̂(y) < 1 (key tokens, and every token when λ < 1) it has no minimum and
    Q(y) is pushed toward 0 for as long as training runs.

    * ``ga_weight=0`` is the 'w/o GA' ablation, ``lam=0`` is plain GA ('w/o Reg').
    * ``lam`` may be a (N,) tensor: a per-token λ (e.g. derived from H(R̂)) needs no other change.
    * ``regularizer`` ∈ {"kl", "jsd", "cos"}.
    * ``terms``, where given, receives the two means apart, as floats: ``forget_ll`` (log Q(y)) and
      ``reference_{regularizer}`` (D(R̂ ‖ Q)); 0 for a batch without answer tokens.
    """
    if regularizer not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {regularizer!r}; expected one of {sorted(REGULARIZERS)}")
    logits = _upcast(logits)
    if logits.shape[0] == 0:  # a batch with no answer tokens: nothing to unlearn, keep the graph
        if terms is not None:
            terms.update({"forget_ll": 0.0, f"reference_{regularizer}": 0.0})
        return logits.sum() * 0.0
    log_q = F.log_softmax(logits, dim=-1)
    log_q_y = log_q.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    reg = REGULARIZERS[regularizer](ref_probs.detach(), logits)
    lam_t = torch.as_tensor(lam, dtype=logits.dtype, device=logits.device)
    if terms is not None:
        means = torch.stack([log_q_y.mean(), reg.mean()]).tolist()  # one read from the device, not two
        terms.update({"forget_ll": means[0], f"reference_{regularizer}": means[1]})
    return (ga_weight * log_q_y + lam_t * reg).mean()


# --------------------------------------------------------------------------------------------------
# compact storage of R̂
# --------------------------------------------------------------------------------------------------
def compress_topk(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(N,V) -> top-k indices (N,k) and their probabilities (N,k) float32.

    Indices are int32 when the vocabulary fits (halves the cache); ``k`` is clipped to [0, V].
    Storing R̂ densely costs N·V floats (32k+ per answer token); top-k costs N·k.
    """
    vocab = probs.shape[-1]
    k = max(0, min(int(k), vocab))
    values, indices = torch.topk(probs, k, dim=-1)
    index_dtype = torch.int32 if vocab <= torch.iinfo(torch.int32).max else torch.int64
    return indices.to(index_dtype), values.to(torch.float32)


def decompress_topk(
    indices: Tensor, values: Tensor, vocab_size: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(N,V): the stored top-k mass at its indices, the remaining mass 1 - Σ values spread uniformly
    over the other V - k tokens.

    Error: uniform tail is the best tail-flat approximation of R in KL(R ‖ ·), and
    KL(R ‖ R̃) = t · KL(R_tail/t ‖ uniform) ≤ t · log(V - k), t = tail mass. It is non-increasing in k
    and exactly 0 at k = V (float32 storage adds at most ~1e-5 nats when t is below float32
    resolution). The gradient error in ViKeR is λ(R̃ - R), with L1 norm ≤ 2λt. For peaked
    distributions (top-5 mass ≈ 0.9, V = 32000) k = 64 gives mean KL < 0.05 nats; spread-out ones
    (top-5 mass ≈ 0.5) need k in the hundreds or more. See tests/test_losses.py.

    When rounding of the float32 values leaves no mass for the tail, each tail token gets the smallest
    normal float32 instead of 0, so KL(R ‖ R̃) stays finite (the excess mass is below 1e-33).
    """
    k = indices.shape[-1]
    values = values.to(dtype)
    n_rest = vocab_size - k
    if n_rest > 0:
        # accumulate in float64: the tail can be smaller than float32's resolution near 1 (6e-8)
        rest = (1.0 - values.double().sum(dim=-1, keepdim=True)).clamp_min(0.0)
        fill = (rest / n_rest).clamp_min(torch.finfo(torch.float32).tiny).to(dtype)
    else:
        fill = values.new_zeros(values.shape[:-1] + (1,))
    out = fill.expand(*values.shape[:-1], vocab_size).clone()
    out.scatter_(-1, indices.long(), values)
    return out
