
import pytest

from wsis_cli.budget import SECONDS_PER_DAY, CostModel, budget, per_image_seconds
from wsis_cli.errors import WsisError


def test_table1_per_image_costs():
    assert per_image_seconds(CostModel()) == {"il": 20.0, "ilc": 22.22, "box": 38.1, "full": 239.7}


# The mask-guided paper's Tables 6 and 8 (days). The random rows are N full images plus the
# weak set at IL+C; the mask-guided rows add the IL+C labels of the 1464 VOC train images
# that were scored for selection, less the strong ones.
@pytest.mark.parametrize("strong,weak,days", [
    (200, 0, 0.55), (400, 0, 1.11), (800, 0, 2.22),          # Table 6, random, annotation network
    (200, 9118, 2.90), (400, 9118, 3.45), (800, 9118, 4.56),  # Table 6, random, segmentation network
    (400, 1464 - 400, 1.38), (800, 1464 - 800, 2.39),          # Table 6, mask-guided, annotation network
    (400, 9118 + 1464 - 400, 3.73), (800, 9118 + 1464 - 800, 4.73),
    (200, 4559, 1.73), (400, 4559, 2.28), (800, 4559, 3.39),  # Table 8, random, segmentation network
    (400, 4559 + 1464 - 400, 2.55), (800, 4559 + 1464 - 800, 3.56),
])
def test_paper_tables_6_and_8(strong, weak, days):
    rec = budget(strong=strong, weak=weak, weak_type="ilc")
    assert round(rec["total"]["days"], 2) == pytest.approx(days, abs=0.011)


def test_mask_guided_n200_row_differs_from_the_paper():
    # The paper prints 0.90 / 3.25 / 2.08 days for N = 200 (mask-guided). Its rule (IL+C labels
    # for the 1464 - N scored images) gives 0.88 / 3.22 / 2.05, as every other row of both
    # tables agrees with; no whole pool size reproduces all three printed values exactly
    # (0.90 needs 1322-1361 images, 3.25 needs 1342-1381). We keep the rule, not the misprint.
    assert round(budget(strong=200, weak=1264)["total"]["days"], 2) == 0.88
    assert round(budget(strong=200, weak=1264 + 9118)["total"]["days"], 2) == 3.22
    assert round(budget(strong=200, weak=1264 + 4559)["total"]["days"], 2) == 2.05


def test_parts_and_equivalent_full_images():
    rec = budget(strong=10, weak=100, weak_type="box")
    assert rec["strong"] == {"images": 10, "seconds": 2397.0, "hours": pytest.approx(2397.0 / 3600),
                             "days": pytest.approx(2397.0 / SECONDS_PER_DAY, rel=1e-11)}
    assert rec["weak"]["seconds"] == pytest.approx(3810.0)
    assert rec["total"]["hours"] == pytest.approx((2397 + 3810) / 3600)
    assert rec["equivalent_full_images"] == pytest.approx((2397 + 3810) / 239.7)


def test_overrides_change_the_model():
    m = CostModel(classes=80, classes_per_image=2.9, objects_per_image=7.3, t_mask=60)
    per = per_image_seconds(m)
    assert per["il"] == 80
    assert per["full"] == pytest.approx((80 - 2.9) + 7.3 * 60)
    with pytest.raises(WsisError, match="t_mask must be a finite number >= 0, got -1"):
        CostModel(t_mask=-1)
    with pytest.raises(WsisError, match="exceeds the number of classes"):
        CostModel(classes=1, classes_per_image=2)




def _leaves(obj, path=""):
    """Every (path, value) of a nested dict."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    else:
        yield path, obj


@pytest.mark.parametrize("strong, weak, weak_type", [(10, 30, "ilc"), (0, 0, "il"), (3, 7, "box"), (1, 0, "full")])
def test_json_types_counts_int_times_float(strong, weak, weak_type):
    rec = budget(strong=strong, weak=weak, weak_type=weak_type)
    counts = {"strong.images", "weak.images", "cost_model.classes"}
    for path, value in _leaves(rec):
        if path == "weak.type":
            assert value == weak_type
        elif path in counts:
            assert type(value) is int, (path, value)
        else:  # seconds, hours, days, per-image seconds, averages, equivalent images: all floats
            assert type(value) is float, (path, value)
    assert {"seconds", "hours", "days"} <= set(rec["strong"]) and set(rec["total"]) == {"seconds", "hours", "days"}
    # one rounding rule for every time: no float noise, and hours and days agree with seconds
    for part in ("strong", "weak", "total"):
        t = rec[part]
        assert t["hours"] == pytest.approx(t["seconds"] / 3600, rel=1e-11)
        assert t["days"] == pytest.approx(t["seconds"] / SECONDS_PER_DAY, rel=1e-11)


def test_float_noise_is_trimmed_and_precision_kept():
    rec = budget(strong=10, weak=30, weak_type="ilc")
    assert rec["weak"]["seconds"] == 666.6  # 30 x 22.22, not 666.5999999999999
    assert rec["total"]["days"] == 0.0354583333333  # 3063.6 s: 12 significant digits, not 3 places
    assert budget(strong=1, weak=0)["total"]["days"] == pytest.approx(239.7 / SECONDS_PER_DAY, rel=1e-11)


def test_counts_must_be_whole_numbers():
    assert CostModel(classes=80.0).classes == 80 and type(CostModel(classes=80.0).classes) is int
    assert type(CostModel(t_mask=60).t_mask) is float
    with pytest.raises(WsisError, match="classes must be a whole number >= 0, got 20.5"):
        CostModel(classes=20.5)
    with pytest.raises(WsisError, match="strong image count must be a whole number >= 0, got 2.5"):
        budget(strong=2.5, weak=0)
    with pytest.raises(WsisError, match="weak image count must be a whole number >= 0, got -1"):
        budget(strong=0, weak=-1)
    assert budget(strong=2.0, weak=0)["strong"]["images"] == 2
