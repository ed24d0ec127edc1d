"""Which weakly labelled images to send to human annotators (mask-guided sample selection).

Each image carries a score, usually the mean predicted mask IoU of its instances (``wsis
score-iou``). The paper's policy takes the images whose score is closest to a target ``β``:
mid-range images (several instances, neither trivial nor hopeless) help the annotation
network most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsis_cli.coco import is_id
from wsis_cli.errors import InputError, WsisError

__all__ = ["STRATEGIES", "ImageScores", "parse_scores", "select", "split_evenly"]

STRATEGIES = ("closest", "random", "lowest", "highest")


@dataclass(frozen=True)
class ImageScores:
    """Per-image scores: ``image_ids`` (N,) int64 and ``scores`` (N,) float64 (NaN: no score)."""

    image_ids: np.ndarray
    scores: np.ndarray
    path: str = "<memory>"  # the scores file, for messages

    def __post_init__(self) -> None:
        if self.image_ids.shape != self.scores.shape or self.image_ids.ndim != 1:
            raise ValueError("image_ids and scores must be 1-D arrays of one length")


def parse_scores(obj, *, path: str = "<memory>") -> ImageScores:
    """``{"images": [{"image_id": int, "score": float|null, ...}, ...]}`` -> :class:`ImageScores`."""
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise InputError(path, "a scores file must be an object with an 'images' list")
    ids, scores, seen = [], [], set()
    for i, rec in enumerate(obj["images"]):
        name = f"images[{i}]"
        if not isinstance(rec, dict):
            raise InputError(path, "must be an object", name)
        iid = rec.get("image_id")
        if not is_id(iid):
            raise InputError(path, "'image_id' must be an integer (int64)", name)
        name = f"image {iid}"
        if iid in seen:
            raise InputError(path, "duplicate image id", name)
        seen.add(iid)
        s = rec.get("score")
        if s is None:
            s = float("nan")
        elif isinstance(s, bool) or not isinstance(s, (int, float)) or not np.isfinite(s):
            raise InputError(path, "'score' must be a finite number or null", name)
        ids.append(iid)
        scores.append(float(s))
    return ImageScores(np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float64), path)


def split_evenly(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` near-equal shares, the first ones taking the remainder."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def select(scores: ImageScores, *, n: int, strategy: str = "closest", betas: list[float] | None = None,
           exclude: set[int] | frozenset[int] = frozenset(), seed: int = 0) -> np.ndarray:
    """Image ids (n,) chosen by ``strategy``.

    - ``closest``: the images with the smallest ``|score − β|``, ties broken by image id. With
      several betas, ``n`` is split evenly across them (the paper's single-iteration protocol),
      each beta taking its share in turn from the images not yet taken.
    - ``lowest`` / ``highest``: by score, ties by image id.
    - ``random``: a uniform draw, deterministic for ``seed``.

    Images in ``exclude`` are never chosen; images without a score (NaN) are eligible only for
    ``random``. Asking for more images than are eligible raises :class:`WsisError`.
    """
    if strategy not in STRATEGIES:
        raise WsisError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if n < 0:
        raise WsisError(f"--n must be >= 0, got {n}")
    keep = ~np.isin(scores.image_ids, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
    if strategy != "random":
        keep &= ~np.isnan(scores.scores)
    ids, vals = scores.image_ids[keep], scores.scores[keep]
    if n > ids.size:
        why = "after --exclude and without unscored images" if strategy != "random" else "after --exclude"
        raise WsisError(f"{scores.path}: asked for {n} images but only {ids.size} are eligible ({why})")

    if strategy == "random":
        rng = np.random.default_rng(seed)
        return np.sort(ids)[rng.permutation(ids.size)[:n]]
    if strategy in ("lowest", "highest"):
        key = vals if strategy == "lowest" else -vals
        return ids[np.lexsort((ids, key))[:n]]

    if not betas:
        raise WsisError("strategy 'closest' needs at least one --beta")
    if not all(np.isfinite(b) for b in betas):
        raise WsisError(f"--beta must be finite numbers, got {betas}")
    chosen: list[np.ndarray] = []
    taken = np.zeros(ids.size, dtype=bool)
    for beta, share in zip(betas, split_evenly(n, len(betas))):
        # rounded so that |0.45 - 0.5| and |0.55 - 0.5| tie (and fall to the image id) as on paper
        dist = np.round(np.abs(vals - beta), 12)
        dist[taken] = np.inf
        order = np.lexsort((ids, dist))[:share]
        taken[order] = True
        chosen.append(ids[order])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
