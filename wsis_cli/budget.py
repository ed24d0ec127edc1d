"""Annotation cost model of the mask-guided sample selection paper (its Table 1).

Per-image costs for a dataset of ``C`` classes with ``c̄`` classes and ``n̄`` objects per image:

- image-level labels (IL):           ``t_il   = C · t_class``
- image-level labels + counts (IL+C): ``t_ilc  = t_il + c̄ · t_count``
- full masks:                         ``t_full = (C − c̄) · t_class + n̄ · t_mask``
- boxes:                              ``t_box  = (C − c̄) · t_class + n̄ · t_box``

With the Pascal VOC figures (C = 20, c̄ = 1.5, n̄ = 2.8, t_class = 1 s, t_count = 1.48 s,
t_mask = 79 s, t_box = 7 s) these are 20, 22.22, 239.7 and 38.1 s/image.

JSON types: counts (``classes``, image counts) are ints; every time (seconds, hours, days), rate
and average is a float, trimmed by one rule (:func:`_tidy`: 12 significant digits) so that float
noise such as 666.5999999999999 reads 666.6 and no figure is rounded more than another.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from wsis_cli.errors import WsisError

__all__ = ["CostModel", "WEAK_TYPES", "per_image_seconds", "budget", "SECONDS_PER_DAY"]

SECONDS_PER_DAY = 86_400.0
WEAK_TYPES = ("il", "ilc", "box", "full")


@dataclass(frozen=True)
class CostModel:
    """Constants of the cost model; defaults are the paper's Pascal VOC figures."""

    classes: int = 20               # C, classes in the label set (a count)
    classes_per_image: float = 1.5  # c̄
    objects_per_image: float = 2.8  # n̄
    t_class: float = 1.0            # s to verify one class's presence
    t_count: float = 1.48           # s to count the instances of one present class
    t_mask: float = 79.0            # s to draw one instance mask
    t_box: float = 7.0              # s to click one box (extreme points)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not _real(value) or not (value >= 0 and math.isfinite(value)):
                raise WsisError(f"cost model: {name} must be a finite number >= 0, got {value!r}")
            # frozen: set the JSON types once here (the count an int, the rest floats)
            object.__setattr__(self, name, _count(value, f"cost model: {name}") if name == "classes" else float(value))
        if self.classes_per_image > self.classes:
            raise WsisError(f"cost model: classes per image ({self.classes_per_image}) "
                            f"exceeds the number of classes ({self.classes})")


def _real(value) -> bool:
    """A plain or numpy number, not a bool (True is no count of classes)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _count(value, what: str) -> int:
    """``value`` as an int when it is a whole number >= 0 (20 or 20.0); WsisError otherwise."""
    if not _real(value) or not math.isfinite(value) or value < 0 or value != int(value):
        raise WsisError(f"{what} must be a whole number >= 0, got {value!r}")
    return int(value)


def _tidy(x: float) -> float:
    """``x`` as a float with 12 significant digits: drops binary noise (3 x 222.2 =
    666.5999999999999 -> 666.6) and keeps every real digit of a time or a ratio."""
    return float(f"{float(x):.12g}")


def per_image_seconds(model: CostModel) -> dict[str, float]:
    """Seconds to annotate one image at each supervision level: keys ``il ilc box full``."""
    m = model
    t_il = m.classes * m.t_class
    absent = (m.classes - m.classes_per_image) * m.t_class
    costs = {
        "il": t_il,
        "ilc": t_il + m.classes_per_image * m.t_count,
        "box": absent + m.objects_per_image * m.t_box,
        "full": absent + m.objects_per_image * m.t_mask,
    }
    return {k: _tidy(v) for k, v in costs.items()}  # 38.1, not 38.099999999999994


def budget(*, strong: int, weak: int, weak_type: str = "ilc", model: CostModel = CostModel()) -> dict:
    """Cost of ``strong`` fully annotated images plus ``weak`` images at ``weak_type``.

    Returns the ``--json`` record of ``wsis budget``: per-image seconds, the strong part, the
    weak part and the total (each as seconds, hours and days of 86,400 s, floats; image counts
    ints) and how many fully annotated images the same total would buy (a float: a share of an
    image is meaningful; None when a full image costs nothing).
    """
    if weak_type not in WEAK_TYPES:
        raise WsisError(f"weak type must be one of {', '.join(WEAK_TYPES)}, got {weak_type!r}")
    strong, weak = _count(strong, "strong image count"), _count(weak, "weak image count")
    per = per_image_seconds(model)
    s_strong = strong * per["full"]
    s_weak = weak * per[weak_type]
    total = s_strong + s_weak
    return {
        "per_image_seconds": per,
        "strong": {"images": strong, **_times(s_strong)},
        "weak": {"images": weak, "type": weak_type, **_times(s_weak)},
        "total": _times(total),
        "equivalent_full_images": _tidy(total / per["full"]) if per["full"] > 0 else None,
        "cost_model": asdict(model),
    }


def _times(seconds: float) -> dict[str, float]:
    """One duration as ``seconds``, ``hours`` and ``days``, each a float by the same rule."""
    return {"seconds": _tidy(seconds), "hours": _tidy(seconds / 3600.0), "days": _tidy(seconds / SECONDS_PER_DAY)}
