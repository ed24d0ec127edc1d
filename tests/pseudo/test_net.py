"""The selection rules of ``pseudolabel net``, with hand-made detections in place of a model."""

import json

import numpy as np
import pytest

from tests.conftest import ann, make_dataset, rect_mask
from wsis_cli.coco import parse_dataset, rle_to_mask
from wsis_cli.detections import Detections
from wsis_cli.errors import WsisError
from wsis_cli.pseudo.net import needs_detections, pseudo_instances, pseudolabel_net

H = W = 64


def dets(rows, ious=True, masks=True):
    """rows: (x1, y1, x2, y2, score, category_id, iou); masks: the boxes' pixels."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    m = np.stack([rect_mask(H, W, *(int(v) for v in r[:4])) for r in rows]) if len(rows) else np.zeros((0, H, W), bool)
    return Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64), H, W, masks=m if masks else None,
                      ious=rows[:, 6] if ious else None)


# class 1: three detections (score, iou) = (0.9, 0.2), (0.3, 0.9), (0.7, 0.5); class 2: 0.5, 0.04, 0.05;
# class 3: one, never labelled below
DET = dets([(0, 0, 10, 10, 0.9, 1, 0.2), (20, 0, 30, 10, 0.3, 1, 0.9), (40, 0, 50, 10, 0.7, 1, 0.5),
            (0, 20, 10, 30, 0.5, 2, 0.6), (20, 20, 30, 30, 0.04, 2, 0.7), (40, 20, 50, 30, 0.05, 2, 0.8),
            (0, 40, 10, 50, 0.99, 3, 0.99)])


def ilc(cat, count=None, id_=1):
    a = {"id": id_, "image_id": 1, "category_id": cat}
    if count is not None:
        a["count"] = count
    return a


def il(cat, id_=1):
    return {"id": id_, "image_id": 1, "category_id": cat, "count": None}


def box(cat, bbox, id_=1):
    return {"id": id_, "image_id": 1, "category_id": cat, "bbox": bbox}


def scores(out):
    return [a["score"] for a in out]


# ----------------------------------------------------------------------------- image-level labels
@pytest.mark.parametrize("anns", [[ilc(1, 2)], [ilc(1, id_=1), ilc(1, id_=2)]], ids=["compact", "per-instance"])
def test_ilc_keeps_the_k_best_by_score(anns):
    out = pseudo_instances(anns, DET, rank="score")
    assert scores(out) == [0.9, 0.7]
    assert [a["iou"] for a in out] == [0.2, 0.5]
    assert all(a["wsis"] == {"method": "net", "source": "ilc"} for a in out)
    assert out[0]["bbox"] == [0.0, 0.0, 10.0, 10.0] and out[0]["area"] == 100.0 and out[0]["iscrowd"] == 0
    np.testing.assert_array_equal(rle_to_mask(out[1]["segmentation"]), DET.masks[2])
    assert "id" not in out[0] and out[0]["image_id"] == 1 and out[0]["category_id"] == 1


def test_parts_and_repeats_of_a_chosen_detection_are_not_other_instances():
    """Class 1: a whole object (0.9), its left half (0.8: half of it inside the whole), the same
    object shifted by 2 px (0.75), another object (0.3), a touching neighbour (0.2: a sliver
    overlaps)."""
    d = dets([(0, 0, 20, 20, 0.9, 1, 0.5), (0, 0, 10, 20, 0.8, 1, 0.5), (2, 0, 22, 20, 0.75, 1, 0.5),
              (40, 40, 50, 50, 0.3, 1, 0.5), (18, 20, 38, 40, 0.2, 1, 0.5)])
    assert scores(pseudo_instances([ilc(1, 3)], d)) == [0.9, 0.3, 0.2]
    assert scores(pseudo_instances([ilc(1, 2)], d)) == [0.9, 0.3]
    assert scores(pseudo_instances([il(1)], d, score_thr=0.25)) == [0.9, 0.3]
    stats = {}
    pseudo_instances([ilc(1, 4)], d, stats=stats)
    assert stats["short_of_count"] == 1  # three distinct objects for a count of four


def test_ilc_keeps_the_k_best_by_predicted_iou():
    out = pseudo_instances([ilc(1, 2)], DET, rank="iou")
    assert [a["iou"] for a in out] == [0.9, 0.5]
    assert scores(out) == [0.3, 0.7]


def test_ilc_with_fewer_detections_than_the_count():
    stats = {}
    out = pseudo_instances([ilc(1, 5)], DET, stats=stats)
    assert scores(out) == [0.9, 0.7, 0.3]
    assert stats["short_of_count"] == 2
    stats = {}
    assert pseudo_instances([ilc(4, 1)], DET, stats=stats) == [] and stats["short_of_count"] == 1


def test_il_keeps_the_detections_over_the_threshold():
    stats = {}
    out = pseudo_instances([il(2)], DET, score_thr=0.05, stats=stats)
    assert scores(out) == [0.5, 0.05]
    assert all(a["wsis"]["source"] == "il" for a in out)
    assert stats["il_empty"] == 0
    assert scores(pseudo_instances([il(2)], DET, score_thr=0.6, stats=stats)) == []
    assert stats["il_empty"] == 1
    # rank applies to counts only: IL takes everything over the threshold
    assert scores(pseudo_instances([il(2)], DET, rank="iou", score_thr=0.0)) == [0.5, 0.05, 0.04]


def test_unlabelled_classes_are_dropped():
    out = pseudo_instances([ilc(1, 1, id_=1), il(2, id_=2)], DET)
    assert [a["category_id"] for a in out] == [1, 2, 2]
    assert 3 not in {a["category_id"] for a in out}


def test_an_empty_mask_keeps_the_detection_box():
    det = dets([(5, 6, 15, 20, 0.8, 1, 0.5)])
    det.masks[0] = False
    stats = {}
    out = pseudo_instances([ilc(1, 1)], det, stats=stats)
    assert out[0]["bbox"] == [5.0, 6.0, 10.0, 14.0] and out[0]["area"] == 0.0
    assert stats["empty_masks"] == 1


def test_detections_bbox_comes_from_the_mask():
    det = dets([(0, 0, 10, 10, 0.8, 1, 0.5)])
    det.boxes[0] = [0, 0, 12, 11]  # the model's box is a little off its mask
    assert pseudo_instances([ilc(1, 1)], det)[0]["bbox"] == [0.0, 0.0, 10.0, 10.0]


def test_rank_iou_needs_ious_and_detections_need_masks():
    with pytest.raises(WsisError, match="IoU head"):
        pseudo_instances([ilc(1, 1)], dets([(0, 0, 10, 10, 0.8, 1, 0.5)], ious=False), rank="iou")
    out = pseudo_instances([ilc(1, 1)], dets([(0, 0, 10, 10, 0.8, 1, 0.5)], ious=False))
    assert "iou" not in out[0]
    with pytest.raises(WsisError, match="no masks"):
        pseudo_instances([ilc(1, 1)], dets([(0, 0, 10, 10, 0.8, 1, 0.5)], masks=False))
    with pytest.raises(ValueError, match="rank"):
        pseudo_instances([ilc(1, 1)], DET, rank="area")
    with pytest.raises(ValueError, match="detections are needed"):
        pseudo_instances([ilc(1, 1)], None)


# ----------------------------------------------------------------------------- boxes and masks
class FakeMasksInBoxes:
    """Answers each box with its own pixels, score 0.6 and iou 0.4; records its calls."""

    def __init__(self, ious=True):
        self.calls = []
        self.ious = ious

    def __call__(self, boxes, category_ids):
        self.calls.append((np.asarray(boxes).copy(), np.asarray(category_ids).copy()))
        m = np.stack([rect_mask(H, W, *(int(v) for v in b)) for b in boxes])
        m[:, :, 0] = False  # a mask a little smaller than its box
        n = len(boxes)
        return Detections(boxes, np.full(n, 0.6), category_ids, H, W, masks=m,
                          ious=np.full(n, 0.4) if self.ious else None)


def test_box_labels_get_the_model_mask_in_the_box():
    fake = FakeMasksInBoxes()
    anns = [box(2, [0, 5, 20, 10], id_=7), box(1, [30, 30, 10, 10], id_=8)]
    out = pseudo_instances(anns, None, masks_in_boxes=fake)
    assert len(fake.calls) == 1
    np.testing.assert_allclose(fake.calls[0][0], [[0, 5, 20, 15], [30, 30, 40, 40]])
    np.testing.assert_array_equal(fake.calls[0][1], [2, 1])
    assert [a["category_id"] for a in out] == [2, 1]
    assert out[0]["bbox"] == [0.0, 5.0, 20.0, 10.0]  # the annotated box, kept
    assert out[0]["area"] == 190.0  # the model's mask
    assert out[0]["score"] == 0.6 and out[0]["iou"] == 0.4
    assert out[0]["wsis"] == {"method": "net", "source": "box", "ann_id": 7}


def test_box_labels_need_masks_in_boxes():
    with pytest.raises(ValueError, match="masks_in_boxes"):
        pseudo_instances([box(1, [0, 0, 10, 10])], None)


def test_full_annotations_are_kept_unchanged():
    full = ann(3, 1, rect_mask(H, W, 5, 5, 25, 25), 1, note="x")
    out = pseudo_instances([full], None)
    assert out == [{**{k: v for k, v in full.items() if k != "id"}, "wsis": {"method": "net", "source": "full",
                                                                             "ann_id": 3}}]


def test_crowd_boxes_are_copied_not_segmented():
    fake = FakeMasksInBoxes()
    crowd = {**box(1, [0, 0, 30, 30], id_=4), "iscrowd": 1}
    out = pseudo_instances([crowd], None, masks_in_boxes=fake)
    assert fake.calls == [] and out[0]["iscrowd"] == 1 and "segmentation" not in out[0]


def test_mixed_levels_each_by_its_level():
    """Class 1 has a box (over the 0.9 detection) and one more instance as IL+C: the detection
    under the box is that instance's, so the IL+C label takes the next best."""
    fake = FakeMasksInBoxes()
    full = ann(9, 1, rect_mask(H, W, 40, 20, 50, 30), 2)  # over the class-2 0.05 detection
    anns = [box(1, [0, 0, 10, 10], id_=1), ilc(1, 1, id_=2), full, il(2, id_=3)]
    out = pseudo_instances(anns, DET, masks_in_boxes=fake, score_thr=0.0)
    assert [(a["wsis"]["source"], a["category_id"], a.get("score")) for a in out] == [
        ("full", 2, None), ("box", 1, 0.6), ("ilc", 1, 0.7), ("il", 2, 0.5), ("il", 2, 0.04)]


def test_needs_detections():
    assert needs_detections([ilc(1), box(1, [0, 0, 1, 1])])
    assert needs_detections([il(1)])
    assert not needs_detections([box(1, [0, 0, 1, 1]), ann(2, 1, rect_mask(H, W, 0, 0, 2, 2))])
    assert not needs_detections([])


# ----------------------------------------------------------------------------- a dataset
def weak_dataset():
    """Image 1: IL+C (class 1, 2) and IL (class 2); image 2: a box; image 3: a full mask; image 4: nothing."""
    anns = [ilc(1, 2, id_=1), il(2, id_=2),
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20]},
            ann(4, 3, rect_mask(H, W, 0, 0, 8, 8), 2)]
    del anns[3]["area"]
    return parse_dataset(make_dataset([(1, H, W), (2, H, W), (3, H, W), (4, H, W)], anns, n_cats=3))


def test_pseudolabel_net_round_trip():
    ds = weak_dataset()
    detected, boxed = [], []

    def detect(im):
        detected.append(im["id"])
        return DET

    def masks_in_boxes_for(im):
        boxed.append(im["id"])
        return FakeMasksInBoxes()

    seen = []
    labels = pseudolabel_net(ds, ds.images, detect, masks_in_boxes_for, rank="score", score_thr=0.05,
                             options={"model": "run/"}, progress=lambda n, t: seen.append((n, t)))
    out, summary = labels.to_dataset(), labels.summary
    assert detected == [1] and boxed == [2]
    assert seen[-1] == (4, 4)
    again = parse_dataset(json.loads(json.dumps(out.to_json())))
    assert [a["id"] for a in again.annotations] == [1, 2, 3, 4, 5, 6]
    assert [a["image_id"] for a in again.annotations] == [1, 1, 1, 1, 2, 3]
    assert [a.get("score") for a in again.annotations] == [0.9, 0.7, 0.5, 0.05, 0.6, None]
    assert [a.get("iou") for a in again.annotations] == [0.2, 0.5, 0.6, 0.8, 0.4, None]
    assert again.levels() == {"full": 6, "box": 0, "ilc": 0, "il": 0}
    assert again.annotations[5]["area"] == 64.0  # filled in
    assert [im["id"] for im in again.images] == [1, 2, 3, 4] and again.categories == ds.categories
    wsis = again.info["wsis"]
    assert wsis["verb"] == "pseudolabel net"
    assert wsis["options"] == {"rank": "score", "score_thr": 0.05, "model": "run/"}
    assert summary == {"images": 4, "detected": 1, "instances": 6,
                       "by_source": {"full": 1, "box": 1, "ilc": 2, "il": 2},
                       "short_of_count": 0, "images_short": 0, "il_empty": 0, "empty_masks": 0,
                       "unlabelled_images": 0, "low_iou": 0}

    # a labelled image in which nothing is found is left out (training would take it for background)
    from wsis_cli.detections import Detections

    def finds_nothing(im):
        return Detections.empty(DET.height, DET.width, ious=True)

    labels2 = pseudolabel_net(ds, ds.images, finds_nothing, masks_in_boxes_for)
    out2, summary2 = labels2.to_dataset(), labels2.summary
    assert 1 not in [im["id"] for im in out2.images] and summary2["unlabelled_images"] == 1
    assert 4 in [im["id"] for im in out2.images]  # an image without labels stays (a true negative)


def test_min_iou_marks_doubtful_instances_invalid_for_ignore_regions():
    """--min-iou: detected instances predicted below it stay, marked wsis.valid false, so that
    `train maskrcnn --only-valid` makes them ignore regions; kept (full) records are untouched."""
    ds = weak_dataset()
    labels = pseudolabel_net(ds, ds.images, lambda im: DET, lambda im: FakeMasksInBoxes(), min_iou=0.5)
    out = labels.to_dataset()
    valid = [(a.get("iou"), (a.get("wsis") or {}).get("valid")) for a in out.annotations]
    assert valid == [(0.2, False), (0.5, None), (0.6, None), (0.8, None), (0.4, False), (None, None)]
    assert labels.summary["low_iou"] == 2 and out.info["wsis"]["options"]["min_iou"] == 0.5
    from wsis_cli.pseudo.net import summary_line

    assert "2 below --min-iou, marked wsis.valid false" in summary_line(labels.summary, 4)


def test_pseudolabel_net_counts_shortfalls_and_checks_sizes():
    ds = weak_dataset()
    few = dets([(0, 0, 10, 10, 0.9, 1, 0.2)])
    labels = pseudolabel_net(ds, ds.images[:1], lambda im: few, lambda im: None, rank="iou")
    out, summary = labels.to_dataset(), labels.summary
    assert summary["short_of_count"] == 1 and summary["images_short"] == 1 and summary["il_empty"] == 1
    assert len(out.annotations) == 1 and [im["id"] for im in out.images] == [1]
    small = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 32, 32, masks=np.zeros((0, 32, 32), bool))
    with pytest.raises(WsisError, match="image 1"):
        pseudolabel_net(ds, ds.images, lambda im: small, lambda im: FakeMasksInBoxes())


def test_pseudolabel_net_gives_pseudo_labels():
    from wsis_cli.pseudo.labels import PseudoLabels
    from wsis_cli.pseudo.net import summary_line

    ds = weak_dataset()
    labels = pseudolabel_net(ds, ds.images, lambda im: DET, lambda im: FakeMasksInBoxes())
    assert isinstance(labels, PseudoLabels) and labels.ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert labels.methods == ["net"] * 5 + ["kept"]  # the full annotation is kept as it is
    assert labels.boxes.shape == (6, 4) and labels.areas[5] == 64.0  # its area, filled in
    np.testing.assert_allclose(labels.boxes[0], [0, 0, 10, 10])
    assert labels.scores[:5].tolist() == pytest.approx([0.9, 0.7, 0.5, 0.05, 0.6]) and np.isnan(labels.scores[5])
    assert summary_line(labels.summary, len(labels.images)) == "6 instances in 4 images (full 1, box 1, ilc 2, il 2)"
    assert summary_line({**labels.summary, "images_short": 1, "unlabelled_images": 2}, 4).endswith(
        "; 1 images with fewer detections than their counts; 2 labelled images left out (nothing found in them, "
        "and training would take them for background)")
