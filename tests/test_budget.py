
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
    assert rec["strong"] == {"images": 10, "seconds": 2397.0, "days": 2397.0 / SECONDS_PER_DAY}
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


