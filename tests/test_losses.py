"""losses.py against loop-by-loop implementations of the papers' formulas (float64, scalars)."""

from __future__ import annotations

import math

import pytest
import torch

import losses
from losses import VadNegatives

TOL = 1e-10


def unit(x: torch.Tensor) -> list[float]:
    norm = math.sqrt(sum(float(c) ** 2 for c in x))
    return [float(c) / norm for c in x]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def ref_weights(i: int, negatives: list[int], sim: dict, dist: dict, cfg: VadNegatives | None) -> dict:
    """w_in of supcon's docstring, one pair at a time. dist[(i, n)] is None when a VAD is unknown."""
    if cfg is None:
        return {n: 1.0 for n in negatives}
    w, kept = {}, []
    for n in negatives:
        d = dist[(i, n)]
        if d is None:
            w[n] = 1.0
        elif d < cfg.threshold:
            w[n] = 0.0
        else:
            kept.append(n)
    u = {n: math.exp(cfg.beta * sim[(i, n)]) * max(dist[(i, n)], 1e-6) ** cfg.alpha for n in kept}
    for n in kept:
        w[n] = len(kept) * u[n] / sum(u.values())
    return w


def ref_dist(vad_a: list[float], vad_b: list[float]) -> float | None:
    if any(math.isnan(x) for x in vad_a + vad_b):
        return None
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(vad_a, vad_b, strict=True)))


def ref_nt_xent(z1, z2, t, vad=None, cfg=None) -> float:
    """SimCLR eq. 1 with views ordered (1, 1'), (2, 2'), ...: view k is sample k // 2."""
    views = [unit(row) for pair in zip(z1, z2, strict=True) for row in pair]
    n = len(views)
    vads = [vad[k // 2].tolist() for k in range(n)] if vad is not None else None
    total = 0.0
    for i in range(n):
        j = i + 1 if i % 2 == 0 else i - 1
        sim = {(i, k): dot(views[i], views[k]) / t for k in range(n)}
        negatives = [k for k in range(n) if k // 2 != i // 2]
        dist = {(i, k): ref_dist(vads[i], vads[k]) for k in negatives} if vads else {}
        w = ref_weights(i, negatives, sim, dist, cfg if vads else None)
        denom = math.exp(sim[(i, j)]) + sum(w[k] * math.exp(sim[(i, k)]) for k in negatives)
        total += -math.log(math.exp(sim[(i, j)]) / denom)
    return total / n


def ref_supcon(z, labels, t, vad=None, cfg=None) -> float:
    """SupCon eq. 2 (mean over anchors with a positive); view (b, v) has index b * V + v."""
    b_size, v_size, _ = z.shape
    views = [unit(z[b, v]) for b in range(b_size) for v in range(v_size)]
    owner = [b for b in range(b_size) for _ in range(v_size)]
    n = len(views)
    losses_, vads = [], [vad[owner[k]].tolist() for k in range(n)] if vad is not None else None
    for i in range(n):
        others = [a for a in range(n) if a != i]
        positives = [p for p in others if labels[owner[p]] == labels[owner[i]]]
        negatives = [a for a in others if a not in positives]
        if not positives:
            continue
        sim = {(i, a): dot(views[i], views[a]) / t for a in others}
        dist = {(i, a): ref_dist(vads[i], vads[a]) for a in negatives} if vads else {}
        w = ref_weights(i, negatives, sim, dist, cfg if vads else None)
        denom = sum(math.exp(sim[(i, p)]) for p in positives) + sum(w[a] * math.exp(sim[(i, a)]) for a in negatives)
        losses_.append(-sum(math.log(math.exp(sim[(i, p)]) / denom) for p in positives) / len(positives))
    return sum(losses_) / len(losses_)


def random_vad(b: int, gen: torch.Generator, nan_rows=(), close_pairs=()) -> torch.Tensor:
    """[b, 3] VAD in 0-1; ``nan_rows`` unknown; each (i, j) in ``close_pairs`` 0.03 apart."""
    vad = torch.rand(b, 3, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    for i, j in close_pairs:
        vad[j] = vad[i] + torch.tensor([0.03, 0.0, 0.0], dtype=torch.float64)
    for i in nan_rows:
        vad[i] = math.nan
    return vad


CONFIGS = [VadNegatives(), VadNegatives(threshold=0.2, beta=0.5, alpha=2.0), VadNegatives(0.1, 0.0, 0.0)]


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_matches_loop(t):
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    assert abs(losses.nt_xent(z1, z2, t).item() - ref_nt_xent(z1, z2, t)) < TOL


@pytest.mark.parametrize("v", [1, 2, 3])
def test_supcon_matches_loop(v):
    gen = torch.Generator().manual_seed(v)
    z = torch.randn(7, v, 8, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # repeated labels; label 3 is alone (no positive at V=1)
    assert abs(losses.supcon(z, labels, 0.1).item() - ref_supcon(z, labels, 0.1)) < TOL


@pytest.mark.parametrize("cfg", CONFIGS)
def test_vad_weighted_nt_xent_matches_loop(cfg):
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    vad = random_vad(6, gen, nan_rows=[4], close_pairs=[(0, 1), (2, 3)])
    got = losses.nt_xent(z1, z2, 0.1, vad=vad, vad_negatives=cfg).item()
    assert abs(got - ref_nt_xent(z1, z2, 0.1, vad, cfg)) < TOL
    assert abs(got - losses.nt_xent(z1, z2, 0.1).item()) > 1e-3  # the weighting did something


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("v", [1, 2, 3])
def test_vad_weighted_supcon_matches_loop(cfg, v):
    gen = torch.Generator().manual_seed(2 + v)
    z = torch.randn(7, v, 8, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    vad = random_vad(7, gen, nan_rows=[5], close_pairs=[(0, 1), (3, 6)])
    got = losses.supcon(z, labels, 0.1, vad=vad, vad_negatives=cfg).item()
    assert abs(got - ref_supcon(z, labels, 0.1, vad, cfg)) < TOL
    assert abs(got - losses.supcon(z, labels, 0.1).item()) > 1e-4


def test_weighting_off_is_the_plain_loss():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(6, 2, 8, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    vad = random_vad(6, gen, close_pairs=[(0, 1)])
    plain_nt, plain_sc = losses.nt_xent(z[:, 0], z[:, 1], 0.1), losses.supcon(z, labels, 0.1)
    all_nan = torch.full_like(vad, math.nan)
    for kw in [dict(vad=vad), dict(vad_negatives=VadNegatives()), dict(vad=all_nan, vad_negatives=VadNegatives())]:
        assert torch.equal(losses.nt_xent(z[:, 0], z[:, 1], 0.1, **kw), plain_nt)
        assert torch.equal(losses.supcon(z, labels, 0.1, **kw), plain_sc)
    ones = dict(vad=vad, vad_negatives=VadNegatives(0.0, 0.0, 0.0))
    assert abs(losses.nt_xent(z[:, 0], z[:, 1], 0.1, **ones).item() - plain_nt.item()) < TOL
    assert abs(losses.supcon(z, labels, 0.1, **ones).item() - plain_sc.item()) < TOL


def test_close_pairs_are_excluded():
    gen = torch.Generator().manual_seed(4)
    drop_only = VadNegatives(threshold=0.1, beta=0.0, alpha=0.0)
    # Two samples with nearly equal VAD: each is the other's only negative, so once dropped the
    # denominator holds the positive alone and every term is -log 1 = 0.
    z1, z2 = torch.randn(2, 2, 8, generator=gen, dtype=torch.float64)
    vad = torch.tensor([[0.5, 0.5, 0.5], [0.52, 0.5, 0.5]], dtype=torch.float64)
    assert losses.nt_xent(z1, z2, 0.1).item() > 0.01
    assert losses.nt_xent(z1, z2, 0.1, vad=vad, vad_negatives=drop_only).item() == 0.0
    # A hard false negative (sample 1 embedded next to sample 0, same VAD): dropping it lowers the loss.
    z1, z2 = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    z1[1], z2[1] = z1[0] + 0.01, z2[0] - 0.01
    vad = random_vad(5, gen, close_pairs=[(0, 1)])
    plain = losses.nt_xent(z1, z2, 0.1).item()
    dropped = losses.nt_xent(z1, z2, 0.1, vad=vad, vad_negatives=drop_only).item()
    assert dropped < plain - 0.1
    assert losses.nt_xent(z1, z2, 0.1, vad=vad, vad_negatives=VadNegatives(0.01, 0.0, 0.0)).item() == plain


def test_hardness_raises_the_loss():
    # With weights ~ exp(beta s) averaging 1, sum w exp(s) >= sum exp(s) (Chebyshev's sum inequality).
    gen = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    vad = random_vad(6, gen)
    plain = losses.nt_xent(z1, z2, 0.1).item()
    hard = [losses.nt_xent(z1, z2, 0.1, vad=vad, vad_negatives=VadNegatives(0.0, beta, 0.0)).item()
            for beta in (0.5, 1.0, 2.0)]
    assert plain < hard[0] < hard[1] < hard[2]


@pytest.mark.parametrize("vad_negatives", [None, VadNegatives()])
def test_nt_xent_is_supcon_with_two_views_and_distinct_labels(vad_negatives):
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(6, 2, 8, generator=gen, dtype=torch.float64)
    vad = random_vad(6, gen, nan_rows=[2], close_pairs=[(0, 1)])
    kw = dict(vad=vad, vad_negatives=vad_negatives)
    a = losses.nt_xent(z[:, 0], z[:, 1], 0.1, **kw)
    b = losses.supcon(z, torch.arange(6), 0.1, **kw)
    assert abs(a.item() - b.item()) < TOL


def test_weights_are_constants():
    """The gradient is that of the loss with the weights frozen at their values (Robinson et al.)."""
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(5, 2, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    vad, cfg, t = random_vad(5, gen, close_pairs=[(0, 1)]), VadNegatives(0.1, 2.0, 1.0), 0.1
    (grad,) = torch.autograd.grad(losses.nt_xent(z[:, 0], z[:, 1], t, vad=vad, vad_negatives=cfg), z)
    feats = torch.nn.functional.normalize(z.flatten(0, 1), dim=1)  # view k is sample k // 2
    sim = feats @ feats.T / t
    total = 0.0
    for i in range(10):
        negatives = [k for k in range(10) if k // 2 != i // 2]
        dist = {(i, k): ref_dist(vad[i // 2].tolist(), vad[k // 2].tolist()) for k in negatives}
        w = ref_weights(i, negatives, {key: sim[key].item() for key in dist}, dist, cfg)  # floats
        pos = sim[i, i ^ 1]
        total = total - (pos - torch.log(pos.exp() + sum(w[k] * sim[i, k].exp() for k in negatives)))
    (frozen,) = torch.autograd.grad(total / 10, z)
    assert torch.allclose(grad, frozen, atol=1e-10)


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_gradient_is_finite_at_low_temperature(scale):
    gen = torch.Generator().manual_seed(7)
    z = (torch.randn(8, 2, 16, generator=gen) * scale).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    vad = random_vad(8, gen, nan_rows=[3], close_pairs=[(0, 4)]).float()
    for cfg in (None, VadNegatives(), VadNegatives(0.0, 4.0, 2.0)):
        for loss in (losses.nt_xent(z[:, 0], z[:, 1], 0.05, vad=vad, vad_negatives=cfg),
                     losses.supcon(z, labels, 0.05, vad=vad, vad_negatives=cfg),
                     losses.supcon(z[:, :1], torch.arange(8) % 5, 0.05, vad=vad, vad_negatives=cfg)):
            (grad,) = torch.autograd.grad(loss, z)
            assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_autocast_does_not_lower_precision():
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(16, 2, 64, generator=gen)
    labels = torch.arange(16) % 4
    full = losses.supcon(z, labels, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = losses.supcon(z, labels, 0.05)
    assert under_amp.dtype == torch.float32 and abs(under_amp.item() - full.item()) < 1e-5


def test_bad_input_is_named():
    z = torch.randn(4, 2, 8)
    with pytest.raises(ValueError, match="temperature"):
        losses.supcon(z, torch.arange(4), 0.0)
    with pytest.raises(ValueError, match=r"labels must have shape \[B\] = \[4\]"):
        losses.supcon(z, torch.arange(3), 0.1)
    with pytest.raises(ValueError, match="z1 and z2"):
        losses.nt_xent(z[:, 0], z[:3, 1])
    with pytest.raises(ValueError, match=r"vad must have shape \[B, 3\] = \[4, 3\]"):
        losses.supcon(z, torch.arange(4), 0.1, vad=torch.rand(4, 2), vad_negatives=VadNegatives())
    with pytest.raises(ValueError, match="0-1"):
        losses.vad_distance(torch.tensor([[0.5, 0.5, 3.0], [0.1, 0.2, 0.3]]))
    with pytest.raises(ValueError, match="no anchor has a positive"):
        losses.supcon(z[:, :1], torch.arange(4), 0.1)
    with pytest.raises(ValueError, match="threshold"):
        VadNegatives(threshold=-0.1)


def test_vad_distance():
    vad = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, math.nan, 0.0]])
    d = losses.vad_distance(vad)
    assert torch.allclose(d[:2, :2], torch.tensor([[0.0, math.sqrt(3)], [math.sqrt(3), 0.0]]))
    assert d[2].isnan().all() and d[:, 2].isnan().all()
