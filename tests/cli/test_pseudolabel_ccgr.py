import json

import cv2
import numpy as np
import pytest

from conftest import rect_mask, write
from wsis_cli.boxes import box_iou, xywh_to_xyxy
from wsis_cli.cli.app import app
from wsis_cli.coco import mask_to_rle, parse_dataset, rle_to_mask
from wsis_cli.pseudo.scoremaps import write_score_maps

H = W = 64


def disc_mask(cx, cy, r):
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r ** 2


def half_box(box):
    """COCO [x, y, w, h] of the x1, y1, x2, y2 box shrunk to 50% about its centre."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return [x1 + w / 4, y1 + h / 4, w / 2, h / 2]


# image 1: a class-1 disc (with its point) and a class-2 rectangle (no point);
# image 2: two touching class-1 squares, each with its point, and a class-2 crowd region
TRUTH = {1: [8.0, 10, 32, 34], 2: [36.0, 8, 60, 30], 3: [8.0, 20, 28, 40], 4: [28.0, 20, 48, 40]}
POINTS = {1: [20.0, 22.0], 3: [18.0, 30.0], 4: [38.0, 30.0]}
MASKS = {1: disc_mask(20, 22, 12), 2: rect_mask(H, W, 36, 8, 60, 30), 3: rect_mask(H, W, 8, 20, 28, 40),
         4: rect_mask(H, W, 28, 20, 48, 40)}
CROWD_MASK = rect_mask(H, W, 50, 50, 60, 60)
CROWD = {"id": 5, "image_id": 2, "category_id": 2, "iscrowd": 1, "segmentation": mask_to_rle(CROWD_MASK),
         "area": 100.0, "bbox": [50.0, 50.0, 10.0, 10.0]}


def plane(*masks):
    """A class map at half resolution: the union, blurred, pooled 2x2."""
    full = cv2.GaussianBlur(np.any(masks, axis=0).astype(np.float32), (0, 0), 1.0)
    return cv2.resize(full, (W // 2, H // 2), interpolation=cv2.INTER_AREA)


@pytest.fixture
def scene(tmp_path):
    anns = []
    for aid, image_id, cid in ((1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 2, 1)):
        a = {"id": aid, "image_id": image_id, "category_id": cid, "bbox": half_box(TRUTH[aid]), "iscrowd": 0}
        if aid in POINTS:
            a["point"] = POINTS[aid]
        anns.append(a)
    ds = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                     {"id": 2, "file_name": "sub/b.png", "height": H, "width": W}],
          "annotations": anns + [dict(CROWD)],
          "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}
    maps = tmp_path / "maps"
    write_score_maps(maps / "a.npz", np.stack([plane(MASKS[1]), plane(MASKS[2])]), [1, 2])
    write_score_maps(maps / "b.npz", np.stack([plane(MASKS[3], MASKS[4]), plane(CROWD_MASK)]), [1, 2])
    return write(tmp_path / "boxes.json", ds), maps



def run(runner, *args):
    return runner.invoke(app, ["pseudolabel", "ccgr", *map(str, args)])


def iou(a, b):
    return float(box_iou(np.asarray(a, dtype=float)[None], np.asarray(b, dtype=float)[None])[0, 0])


def one_line_error(r):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsis: error: "), r.stderr
    return lines[0]


def test_boxes_move_onto_the_objects(runner, scene, tmp_path):
    boxes, maps = scene
    out = tmp_path / "out.json"
    r = run(runner, boxes, "--maps", maps, "--out", out)
    assert r.exit_code == 0, r.output
    assert "4 boxes refined (3 with a point)" in r.stderr
    obj = json.loads(out.read_text())
    ds = parse_dataset(obj)  # a valid COCO dataset
    by_id = {a["id"]: a for a in ds.annotations}
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    assert by_id[5] == CROWD  # crowd passed through as it was
    inputs = {a["id"]: a for a in json.loads(boxes.read_text())["annotations"]}
    for aid, truth in TRUTH.items():
        a = by_id[aid]
        before, after = xywh_to_xyxy(a["wsis"]["box_before"])[0], xywh_to_xyxy(a["bbox"])[0]
        assert a["wsis"]["box_before"] == inputs[aid]["bbox"] and a["wsis"]["method"] == "ccgr"
        assert iou(after, truth) >= 0.7 and iou(after, truth) > iou(before, truth) + 0.3, (aid, a["bbox"])
        outward = np.array([-1, -1, 1, 1]) * (after - truth)  # mass: holds the object and the maps' blurred rim
        assert (outward > -0.5).all() and (outward < 3).all(), (aid, a["bbox"])
        m = rle_to_mask(a["segmentation"])
        assert m.shape == (H, W) and a["area"] == m.sum() > 0
        ys, xs = np.nonzero(m)
        assert xs.min() + 0.5 >= after[0] - 0.01 and xs.max() + 0.5 <= after[2] + 0.01  # pixel centres in the box
        assert ys.min() + 0.5 >= after[1] - 0.01 and ys.max() + 0.5 <= after[3] + 0.01
        assert (m & MASKS[aid]).sum() / (m | MASKS[aid]).sum() > 0.8
        if aid in POINTS:
            assert a["point"] == POINTS[aid]  # other fields kept
            px, py = POINTS[aid]
            assert after[0] <= px <= after[2] and after[1] <= py <= after[3]
    # the touching squares: each stops near the contact line x = 28 and leaves the other's point out
    a3, a4 = xywh_to_xyxy(by_id[3]["bbox"])[0], xywh_to_xyxy(by_id[4]["bbox"])[0]
    assert a3[2] < POINTS[4][0] and a4[0] > POINTS[3][0]
    assert abs(a3[2] - 28) < 1 and abs(a4[0] - 28) < 1
    info = obj["info"]["wsis"]
    assert info["verb"] == "pseudolabel ccgr" and info["seed"] == 0
    assert info["options"]["objective"] == "mass" and info["options"]["stop"] == "split"
    assert info["options"]["maps"] == str(maps) and info["options"]["boxes"] == str(boxes)
    assert info["summary"]["boxes"] == 4 and info["summary"]["with_point"] == 3
    assert info["summary"]["dropped"] == info["summary"]["fallback"] == 0


@pytest.mark.parametrize("opts", [["--objective", "gap"], ["--stop", "point"],
                                  ["--context", "2", "--lr", "0.05", "--threshold", "0.3", "--mask-thr", "0.3"]])
def test_other_options(runner, scene, opts):
    boxes, maps = scene
    r = run(runner, boxes, "--maps", maps, "--steps", 60, *opts)
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    by_id = {a["id"]: a for a in obj["annotations"]}
    for aid, truth in TRUTH.items():
        before, after = xywh_to_xyxy(by_id[aid]["wsis"]["box_before"])[0], xywh_to_xyxy(by_id[aid]["bbox"])[0]
        assert iou(after, truth) > iou(before, truth), (opts, aid)
    options = obj["info"]["wsis"]["options"]
    for flag, value in zip(opts[::2], opts[1::2]):
        key = flag[2:].replace("-", "_")
        assert str(options[key]) == value or options[key] == float(value), (key, options[key])
    if "point" in opts:  # the paper's rule: a square's box may reach the other's point, never take it in
        a3, a4 = xywh_to_xyxy(by_id[3]["bbox"])[0], xywh_to_xyxy(by_id[4]["bbox"])[0]
        assert a3[2] < POINTS[4][0] and a4[0] > POINTS[3][0]


def test_same_seed_same_bytes_and_stdout(runner, scene, tmp_path):
    boxes, maps = scene
    outs = []
    for name in ("a.json", "b.json"):
        r = run(runner, boxes, "--maps", maps, "--steps", 30, "--seed", 3, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    r = run(runner, boxes, "--maps", maps, "--steps", 30, "--seed", 3, "--out", "-")
    assert r.exit_code == 0 and r.stdout.encode() == outs[0]
    assert json.loads(outs[0])["info"]["wsis"]["seed"] == 3


def test_stdin_input(runner, scene):
    boxes, maps = scene
    r = runner.invoke(app, ["pseudolabel", "ccgr", "-", "--maps", str(maps), "--steps", "0"], input=boxes.read_text())
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["info"]["wsis"]["options"]["boxes"] == "<stdin>"
    ins = {a["id"]: a for a in json.loads(boxes.read_text())["annotations"]}
    for a in obj["annotations"]:
        if not a["iscrowd"]:
            assert a["wsis"]["ccgr_box"] == ins[a["id"]]["bbox"]  # --steps 0: the boxes stay, masks are still cut


def test_bad_option_values(runner, scene):
    boxes, maps = scene
    for opts, text in ((["--objective", "nope"], "--objective must be one of mass, gap, got 'nope'"),
                       (["--stop", "nope"], "--stop must be one of split, point, got 'nope'"),
                       (["--context", 1], "--context must be > 1")):
        r = run(runner, boxes, "--maps", maps, *opts)  # usage errors (exit 2), before any work
        assert r.exit_code == 2 and text in " ".join(r.output.replace("│", " ").split()), r.output
    for opts in (["--steps", "-1"], ["--threshold", "2"], ["--mask-thr", "-0.1"], ["--lr", "-1"]):
        assert run(runner, boxes, "--maps", maps, *opts).exit_code == 2, opts
    r = run(runner, boxes, "--maps", maps.parent / "nowhere")
    assert r.exit_code == 2 and "nowhere" in r.output
    r = run(runner, boxes)
    assert r.exit_code == 2 and "--maps" in r.output


def test_missing_map_file(runner, scene, tmp_path):
    boxes, maps = scene
    (maps / "b.npz").unlink()
    out = tmp_path / "o.json"
    line = one_line_error(run(runner, boxes, "--maps", maps, "--out", out))
    assert line == f"wsis: error: {maps / 'b.npz'}: image 2 (sub/b.png): no score map file for this image"
    assert not out.exists()


def test_map_without_the_category_plane(runner, scene):
    boxes, maps = scene
    write_score_maps(maps / "a.npz", plane(MASKS[1])[None], [1])
    line = one_line_error(run(runner, boxes, "--maps", maps))
    assert line == (f"wsis: error: {maps / 'a.npz'}: image 1 (a.png): has no plane for category 2, needed by "
                    f"annotation 2 (image 1) of {boxes}")


def test_bad_map_file(runner, scene):
    boxes, maps = scene
    (maps / "a.npz").write_text("oops")
    line = one_line_error(run(runner, boxes, "--maps", maps))
    assert line.startswith(f"wsis: error: {maps / 'a.npz'}: image 1 (a.png): not a readable .npz file")


def test_annotations_without_a_box_or_with_a_bad_point(runner, scene, tmp_path):
    boxes, maps = scene
    ds = json.loads(boxes.read_text())
    del ds["annotations"][1]["bbox"]
    line = one_line_error(run(runner, write(tmp_path / "nobox.json", ds), "--maps", maps))
    assert line == f"wsis: error: {tmp_path / 'nobox.json'}: annotation 2 (image 1): has no bbox to refine"
    ds = json.loads(boxes.read_text())
    ds["annotations"][0]["point"] = [1, "x"]
    line = one_line_error(run(runner, write(tmp_path / "badpoint.json", ds), "--maps", maps))
    assert line == (f"wsis: error: {tmp_path / 'badpoint.json'}: annotation 1 (image 1): "
                    "'point' must be [x, y], got [1, 'x']")


@pytest.mark.parametrize("point, problem", [
    ("NaN", "'point' must be finite, got [nan, 22.0]"),
    (f"{W + 30}", f"'point' [{W + 30}, 22.0] lies outside its {W}x{H} image"),
])
def test_a_point_that_is_not_finite_or_not_in_its_image_is_refused(runner, scene, tmp_path, point, problem):
    boxes, maps = scene
    text = boxes.read_text().replace('"point": [20.0, 22.0]', f'"point": [{point}, 22.0]')
    bad = tmp_path / "bad.json"
    bad.write_text(text)  # json.loads reads the NaN literal
    out = tmp_path / "o.json"
    line = one_line_error(run(runner, bad, "--maps", maps, "--out", out))
    assert line == f"wsis: error: {bad}: annotation 1 (image 1): {problem}"
    assert not out.exists()


def test_boxes_outside_the_image_are_left_out_and_boxes_across_its_edge_clipped(runner, scene, tmp_path):
    boxes, maps = scene
    ds = json.loads(boxes.read_text())
    ds["annotations"][1]["bbox"] = [W + 5.0, 4.0, 10.0, 10.0]     # annotation 2: wholly outside
    ds["annotations"][2]["bbox"] = [-6.0, 22.0, 20.0, 14.0]       # annotation 3: across the left edge
    r = run(runner, write(tmp_path / "edge.json", ds), "--maps", maps, "--steps", 0)
    assert r.exit_code == 0, r.output
    assert "annotation 2 (image 1): its box" in r.stderr and "left out" in r.stderr
    out = {a["id"]: a for a in json.loads(r.stdout)["annotations"]}
    assert 2 not in out and set(out) == {1, 3, 4, 5}
    assert out[3]["wsis"]["box_before"] == [0.0, 22.0, 14.0, 14.0] and out[3]["bbox"][0] >= 0
