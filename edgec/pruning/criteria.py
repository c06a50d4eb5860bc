"""Channel importance criteria: each maps a channel group to one score per channel (higher = keep).

Scores of a group come from all of its members, so a residual stage is judged on every layer that writes it.
In a group folded by a grouped Conv (:mod:`edgec.pruning.groups`) the unit scored is the set of channels at one
position of every block: its filter is the concatenation of theirs (norms and gammas add up over the blocks), its
feature map the concatenation of their maps.
Each member's per-channel scores are divided by their mean before averaging, so that a layer with large weights
does not outvote the others, and so that scores of different groups are comparable for a global (MACs) budget.

* ``l1`` / ``l2``: norm of each filter (Li et al. 2017); cheap, data-free.
* ``bn-scale``: ``|gamma|`` of the BatchNormalization on the channel (network slimming, Liu et al. 2017);
  groups with no BN fall back to ``l1`` (and the report says so).
* ``filtersketch``: data-free second-order score. The filters of a layer (rows of a C×d matrix W) are summarised
  by a Frequent Directions sketch B (ℓ = ⌈C/2⌉ rows, Liberty 2013; FilterSketch, Lin et al. 2020, uses the same
  sketch of W's covariance). A filter's score is its energy under the sketched covariance, ``wᵢᵀ BᵀB wᵢ``: filters
  that lie along the directions the layer as a whole uses rank high; tiny filters and filters off that subspace
  rank low. (FilterSketch proper replaces the weights by the sketch and then fine-tunes; we only rank.)
* ``similarity``: feature-map similarity clustering, the first stage of ACP: channels whose feature maps on
  calibration data are near copies of another's (cosine similarity) are redundant. Agglomerative merging: the most
  similar pair is merged by dropping its weaker channel (smaller activation norm), repeatedly; the order of
  dropping is the ranking. Dead channels (all-zero maps) go first. Needs calibration data.
* ``thinet``: ThiNet (Luo et al. 2017): greedy selection by the reconstruction error of the *next* layers'
  outputs on calibration activations (:mod:`edgec.pruning.thinet`). Needs calibration data.
* ``thinet-ls``: the same greedy selection, charging each channel the error the next layers keep *after* their
  least-squares refit (what ``--reconstruct`` does next): a channel the kept ones can re-create costs nothing.
  The best choice with ``--reconstruct``. Needs calibration data.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from edgec.errors import EdgecError
from edgec.pruning.groups import ChannelGroup, Member

__all__ = ["CRITERIA", "Features", "score_group", "filters", "frequent_directions"]


class Features(Protocol):
    """Calibration activations by tensor name: array N×C×... (channel axis 1)."""

    def __call__(self, name: str) -> np.ndarray: ...


Weights = dict[str, np.ndarray]
Criterion = Callable[[ChannelGroup, Weights, "Features | None"], np.ndarray]


def filters(member: Member, weights: Weights, size: int) -> np.ndarray:
    """The member's slice of its initializer as a size×d matrix: row c holds everything indexed by channel c (in
    a group folded by a grouped Conv: unit c, the concatenation of its channels' rows in every block, so a unit's
    L1 norm is the sum of its channels' and its L2 norm that of all their weights together)."""
    w = np.moveaxis(np.asarray(weights[member.value], dtype=np.float64), member.axis, 0)
    blocks = [w[start: start + size * member.inner].reshape(size, -1)
              for start in member.offset + member.stride * np.arange(member.blocks)]
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


def _normalized_mean(rows: list[np.ndarray], size: int) -> np.ndarray:
    if not rows:
        return np.ones(size)
    out = np.zeros(size)
    for r in rows:
        mean = float(np.mean(r))
        out += r / mean if mean > 0 else r
    return out / len(rows)


def _filter_members(group: ChannelGroup) -> list[Member]:
    """Members whose slices are the group's filters (what writes the channels); consumer columns if none."""
    return group.members_with("out", "dw") or group.members_with("in")


def _norm(order: int) -> Criterion:
    def score(group: ChannelGroup, weights: Weights, features: Features | None = None) -> np.ndarray:
        rows = [np.linalg.norm(filters(m, weights, group.size), ord=order, axis=1) for m in _filter_members(group)]
        return _normalized_mean(rows, group.size)

    score.__doc__ = f"L{order} norm of every filter writing the channel, averaged over the group's layers."
    return score


def bn_scale(group: ChannelGroup, weights: Weights, features: Features | None = None) -> np.ndarray:
    """|gamma| of each BatchNormalization on the group (network slimming); L1 when the group has no BN."""
    rows = [np.abs(filters(m, weights, group.size)).sum(axis=1) for m in group.members_with("bn_scale")]
    if not rows:
        return _norm(1)(group, weights, features)
    return _normalized_mean(rows, group.size)


def frequent_directions(a: np.ndarray, ell: int) -> np.ndarray:
    """Frequent Directions sketch B (ell×d) of the rows of ``a``: ‖AᵀA − BᵀB‖₂ ≤ ‖A‖²_F / ell."""
    n, d = a.shape
    ell = max(1, min(ell, d))
    b = np.zeros((2 * ell, d))
    filled = 0
    for row in a:
        if filled == 2 * ell:
            _, s, vt = np.linalg.svd(b, full_matrices=False)
            shrink = s[ell - 1] ** 2 if len(s) >= ell else 0.0
            s = np.sqrt(np.maximum(s ** 2 - shrink, 0.0))
            b = np.zeros_like(b)
            b[: len(s)] = s[:, None] * vt
            filled = int(np.count_nonzero(s > 0))
        b[filled] = row
        filled += 1
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    return (s[:ell, None] * vt[:ell])


def filtersketch(group: ChannelGroup, weights: Weights, features: Features | None = None) -> np.ndarray:
    """Each filter's energy under the Frequent Directions sketch of its layer's filter matrix."""
    rows = []
    for m in _filter_members(group):
        w = filters(m, weights, group.size)
        sketch = frequent_directions(w, (group.size + 1) // 2)
        rows.append(np.sum((w @ sketch.T) ** 2, axis=1))
    return _normalized_mean(rows, group.size)


def similarity(group: ChannelGroup, weights: Weights, features: Features | None = None,
               max_points: int = 4096) -> np.ndarray:
    """Drop order of greedy agglomerative merging of near-identical feature maps (see the module docstring)."""
    if features is None:
        raise EdgecError("the similarity criterion needs calibration data",
                         "pass --calib inputs.npy (a few hundred inputs), or pick a data-free criterion (l1, "
                         "l2, bn-scale, filtersketch)")
    parts = []
    rng = np.random.default_rng(0)
    for name, offset, inner in group.values:
        if inner != 1:
            continue
        act = features(name)
        if act is None:
            continue
        f = np.moveaxis(act[:, offset: offset + group.size], 1, 0).reshape(group.size, -1).astype(np.float64)
        if f.shape[1] > max_points:
            f = f[:, rng.choice(f.shape[1], max_points, replace=False)]
        scale = np.linalg.norm(f) / np.sqrt(group.size)
        parts.append(f / scale if scale > 0 else f)
    if not parts:
        return _norm(1)(group, weights, features)
    f = np.concatenate(parts, axis=1)
    norms = np.linalg.norm(f, axis=1)
    unit = f / np.where(norms > 0, norms, 1.0)[:, None]
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    alive = np.ones(group.size, dtype=bool)
    order: list[int] = []
    for i in np.argsort(norms):  # dead channels first, weakest first
        if norms[i] <= 1e-12 * max(norms.max(), 1e-30):
            order.append(int(i))
            alive[i] = False
            sim[i, :] = sim[:, i] = -np.inf
    while alive.sum() > 1:
        best = sim.max(axis=1)
        i = int(np.argmax(np.where(alive, best, -np.inf)))
        j = int(np.argmax(sim[i]))
        drop = i if norms[i] < norms[j] else j
        order.append(drop)
        alive[drop] = False
        sim[drop, :] = sim[:, drop] = -np.inf
    order += [int(i) for i in np.flatnonzero(alive)]
    score = np.empty(group.size)
    score[np.asarray(order)] = (np.arange(group.size) + 1) / group.size
    return score


def thinet(group: ChannelGroup, weights: Weights, features: Features | None = None) -> np.ndarray:
    """Placeholder: ThiNet needs the consumers' activations, so :func:`edgec.pruning.importance` computes it
    (see :mod:`edgec.pruning.thinet`)."""
    raise EdgecError("the thinet criterion needs calibration data",
                     "pass --calib inputs.npy (a few hundred inputs), or pick a data-free criterion (l1, l2, "
                     "bn-scale, filtersketch)")


CRITERIA: dict[str, Criterion] = {
    "l1": _norm(1),
    "l2": _norm(2),
    "bn-scale": bn_scale,
    "filtersketch": filtersketch,
    "similarity": similarity,
    "thinet": thinet,
    "thinet-ls": thinet,
}
NEEDS_DATA = {"similarity", "thinet", "thinet-ls"}


def score_group(name: str, group: ChannelGroup, weights: Weights, features: Features | None) -> np.ndarray:
    if name not in CRITERIA:
        raise EdgecError(f"unknown pruning criterion '{name}'", f"use one of: {', '.join(CRITERIA)}")
    return np.asarray(CRITERIA[name](group, weights, features), dtype=np.float64)
