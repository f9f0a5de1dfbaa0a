"""Contrastive losses: SimCLR's NT-Xent, SupCon, and VAD-aware negatives.

One function per paper, the paper's equation in its docstring. Shapes: B samples, V views per
sample, D embedding dimensions; N = B * V views in all. Embeddings are L2-normalised inside, so
callers may pass raw projections. Both losses are computed in at least float32 with autocast off
(logits of up to 1/temperature do not survive a float16/bfloat16 matmul well).

VAD-aware negatives (``VadNegatives``, this project's addition) change only the *negatives* of an
anchor, never its positives. With ``vad=None`` or ``vad_negatives=None`` both losses are exactly the
plain ones of the papers.

Across processes (``gather=True`` under ``torch.distributed``), every process's anchors contrast against
the views of all processes, as SimCLR and SupCon train on many accelerators: the embeddings are gathered
with gradients, each process computes the terms of its own anchors, scaled so that the mean of the
processes' losses is the loss of the concatenated batch and DDP's mean of their gradients is its gradient.
In one process ``gather`` changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor

# Floor on VAD distances inside the log of the VAD factor, so that identical VAD (d = 0) with
# threshold 0 gives a negligible weight rather than an undefined 0 / 0.
_MIN_DISTANCE = 1e-6


@dataclass(frozen=True)
class VadNegatives:
    """How valence/arousal/dominance reshape an anchor's negatives.

    threshold: pairs of samples whose VAD distance d_ij = ||vad_i - vad_j||_2 (VAD in 0-1, so
        d in [0, sqrt(3)]) is below it are dropped from each other's negatives (likely false
        negatives). 0 drops nothing.
    beta: hardness concentration of Robinson et al. (2021): a negative's weight grows as
        exp(beta * s_ij), s_ij = cosine similarity / temperature. 0 turns hardness off.
    alpha: power of the VAD-distance factor d_ij ** alpha: VAD-far negatives weigh more.
        0 turns it off.

    With threshold = beta = alpha = 0 every weight is 1 and the loss is the plain one.
    """

    threshold: float = 0.1
    beta: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        for name in ("threshold", "beta", "alpha"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"VadNegatives.{name} must be a finite number >= 0, got {value}")


def vad_distance(vad: Tensor) -> Tensor:
    """Euclidean VAD distance between every two samples.

    vad: [B, 3] valence/arousal/dominance in 0-1, NaN where unknown.
    Returns [B, B]; NaN in row i and column i when any of sample i's three values is NaN.
    """
    if vad.ndim != 2 or vad.shape[1] != 3:
        raise ValueError(f"vad must have shape [B, 3], got {list(vad.shape)}")
    known = vad[torch.isfinite(vad).all(dim=1)]
    if ((known < 0) | (known > 1)).any():
        raise ValueError(f"VAD values must lie in 0-1 (or be NaN); got min {known.min().item()}, "
                         f"max {known.max().item()}")
    return (vad[:, None, :] - vad[None, :, :]).norm(dim=-1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, *, vad: Tensor | None = None,
            vad_negatives: VadNegatives | None = None, gather: bool = False) -> Tensor:
    """SimCLR's normalized temperature-scaled cross-entropy (Chen et al., 2020, eq. 1).

    z1, z2: [B, D] two views of the same B samples (normalised inside). vad: [B, 3] or None.
    Returns the scalar mean over the 2B anchors::

        l(i, j) = -log exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)
        L = 1 / (2B) * sum_{k=1..B} [l(2k-1, 2k) + l(2k, 2k-1)]

    sim is the cosine similarity, t the temperature. Each view's positive is the other view of
    its sample; the 2B - 2 views of the other samples are its negatives. With ``vad`` and
    ``vad_negatives`` the negatives' terms of the denominator are weighted as in ``supcon``. ``gather``:
    across processes (module docstring).
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both have shape [B, D], got {list(z1.shape)} and {list(z2.shape)}")
    z, (vad,), mine = _gather(torch.stack([z1, z2], dim=1), vad, enabled=gather)
    same = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return _contrastive(z, same, temperature, vad, vad_negatives, mine)


def supcon(z: Tensor, labels: Tensor, temperature: float = 0.1, *, vad: Tensor | None = None,
           vad_negatives: VadNegatives | None = None, gather: bool = False) -> Tensor:
    """Supervised contrastive loss, L_out form (Khosla et al., 2020, eq. 2).

    z: [B, V, D] V views of B samples (normalised inside). labels: [B] integer classes.
    vad: [B, 3] or None. Returns the scalar mean over anchors::

        L_i = -1 / |P(i)| * sum_{p in P(i)} log exp(z_i . z_p / t) / sum_{a in A(i)} exp(z_i . z_a / t)

    over the N = B * V views: A(i) is every view but i, P(i) the views in A(i) whose sample has
    i's label (the other views of i's own sample included), N(i) = A(i) - P(i) its negatives.
    The paper sums L_i over anchors; we average, and leave out SupContrast's extra factor
    t / base_temperature. An anchor without positives (possible only with V = 1 and a label that
    occurs once in the batch) is left out of the mean; a ValueError is raised when no anchor has one.

    VAD-aware negatives (``vad`` and ``vad_negatives`` given; also used by ``nt_xent``): the
    denominator becomes ``sum_{p in P(i)} exp(s_ip) + sum_{n in N(i)} w_in exp(s_in)`` with
    s = z_i . z_n / t and d_in the VAD distance of the two views' samples (``vad_distance``):

        w_in = 1                                   if d_in is NaN (either sample lacks VAD)
        w_in = 0                                   if d_in < threshold (dropped)
        w_in = |K(i)| * u_in / sum_{k in K(i)} u_ik  otherwise, n in K(i),
        u_in = exp(beta * s_in) * max(d_in, 1e-6) ** alpha

    so the kept negatives with known VAD, K(i), average weight 1 (Robinson et al., 2021, with
    the VAD factor d ** alpha added). The weights are constants (computed without gradient),
    as in Robinson et al.'s implementation. Positives are never dropped or reweighted.

    ``gather``: across processes (module docstring).
    """
    if z.ndim != 3:
        raise ValueError(f"z must have shape [B, V, D], got {list(z.shape)}")
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape [B] = [{z.shape[0]}], got {list(labels.shape)}")
    z, (labels, vad), mine = _gather(z, labels.to(z.device), vad, enabled=gather)
    same = labels[:, None] == labels[None, :]
    return _contrastive(z, same.to(z.device), temperature, vad, vad_negatives, mine)


def _gather(z: Tensor, *others: Tensor | None, enabled: bool) -> tuple[Tensor, tuple[Tensor | None, ...],
                                                                     Tensor | None]:
    """Every process's z [B_p, ...] (with gradients to each process's own) and ``others`` [B_p, ...] (labels,
    VAD; None stays None), concatenated in rank order, and which of the sum(B_p) samples are this process's
    ([sum B_p] bool); batches may differ in size between processes. Not ``enabled``, outside
    ``torch.distributed`` or in one process: the inputs as they are and None."""
    if not (enabled and dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, others, None
    world, b = dist.get_world_size(), z.shape[0]
    sizes = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([b], device=z.device))
    sizes = [int(n) for n in sizes]
    most = max(sizes)

    def pad(t: Tensor) -> Tensor:  # all_gather needs equal shapes
        return torch.cat([t, t.new_zeros((most - b, *t.shape[1:]))])

    def unpad(parts: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    def plain(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        parts = [torch.empty_like(pad(t)) for _ in range(world)]
        dist.all_gather(parts, pad(t))
        return unpad(parts)

    mine = torch.zeros(sum(sizes), dtype=torch.bool, device=z.device)
    start = sum(sizes[:dist.get_rank()])
    mine[start:start + b] = True
    return unpad(dist_nn.all_gather(pad(z))), tuple(plain(t) for t in others), mine


def _contrastive(z: Tensor, same: Tensor, temperature: float, vad: Tensor | None,
                 vad_negatives: VadNegatives | None, mine: Tensor | None = None) -> Tensor:
    """Mean over anchors of -mean_{p in P(i)} log softmax; z [B, V, D], same [B, B] positive samples.

    ``mine`` [B] bool (``_gather``): only the views of these samples are anchors here, and their summed terms
    are divided by the anchors of all processes and multiplied by the number of processes."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, v, _ = z.shape
    with torch.autocast(z.device.type, enabled=False):
        feats = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)).flatten(0, 1), dim=1)
        logits = feats @ feats.T / temperature  # [N, N], row n = view n % V of sample n // V
        sample = torch.arange(b, device=z.device).repeat_interleave(v)  # [N]
        self_mask = torch.eye(b * v, dtype=torch.bool, device=z.device)
        same = same[sample][:, sample]  # [N, N] views of positive samples
        pos = same & ~self_mask
        log_w = torch.zeros_like(logits)
        if vad is not None and vad_negatives is not None:
            if vad.shape != (b, 3):
                raise ValueError(f"vad must have shape [B, 3] = [{b}, 3], got {list(vad.shape)}")
            distance = vad_distance(vad.to(device=z.device, dtype=logits.dtype))[sample][:, sample]
            log_w = _negative_log_weights(logits.detach(), distance, ~same, vad_negatives)
        log_w = log_w.masked_fill(self_mask, -math.inf)

        has_pos = pos.any(dim=1)
        if not has_pos.any():
            raise ValueError("no anchor has a positive: every label occurs once and there is one view per sample")
        # Rows without positives are removed before the logsumexp so no -inf row reaches backward.
        rows = has_pos if mine is None else has_pos & mine[sample]
        logits, log_w, pos = logits[rows], log_w[rows], pos[rows]
        log_prob = logits - torch.logsumexp(logits + log_w, dim=1, keepdim=True)
        per_anchor = -torch.where(pos, log_prob, 0.0).sum(dim=1) / pos.sum(dim=1)
        if mine is None:
            return per_anchor.mean()
        return per_anchor.sum() * dist.get_world_size() / has_pos.sum()


def _negative_log_weights(logits: Tensor, dist: Tensor, neg: Tensor, cfg: VadNegatives) -> Tensor:
    """log w [N, N] of ``supcon``'s docstring on ``neg`` entries, 0 elsewhere; dist [N, N] may hold NaN."""
    known = neg & torch.isfinite(dist)
    dropped = known & (dist < cfg.threshold)
    kept = known & ~dropped
    dist = torch.where(kept, dist, 1.0).clamp_min(_MIN_DISTANCE)
    log_u = (cfg.beta * logits + cfg.alpha * dist.log()).masked_fill(~kept, -math.inf)
    count = kept.sum(dim=1, keepdim=True).to(logits.dtype)
    log_w = torch.log_softmax(log_u, dim=1) + count.clamp_min(1).log()  # NaN on rows with nothing kept
    log_w = torch.where(kept, log_w, 0.0)
    return log_w.masked_fill(dropped, -math.inf)
