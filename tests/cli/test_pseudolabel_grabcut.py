import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import write
from wsis_cli.cli.app import app
from wsis_cli.coco import load_dataset, parse_dataset, rle_to_mask
from wsis_cli.pseudo import grabcut_dataset
from wsis_cli.synth import synthesize
from wsis_cli.weaken import weaken


@pytest.fixture(scope="module")
def synth_boxes(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    gt = synthesize(root, n=8, size=96, seed=2)
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "box.json").write_text(json.dumps(weaken(parse_dataset(gt), "box").to_json()))
    return root


def run(runner, *args):
    r = runner.invoke(app, ["pseudolabel", "grabcut", *map(str, args)])
    return r


def test_masks_for_every_box(runner, synth_boxes, tmp_path):
    out = tmp_path / "pseudo.json"
    r = run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--out", out, "--workers", 1)
    assert r.exit_code == 0, r.output
    ds = load_dataset(out)
    gt = load_dataset(synth_boxes / "gt.json")
    assert [a["id"] for a in ds.annotations] == [a["id"] for a in gt.annotations]
    assert ds.levels()["full"] == len(gt.annotations)
    ious = []
    for im in ds.images:
        masks = [rle_to_mask(a["segmentation"]) for a in ds.anns_by_image[im["id"]]]
        boxes = [a["bbox"] for a in ds.anns_by_image[im["id"]]]
        for m, (x, y, w, h) in zip(masks, boxes):  # --overlap none (the default): masks may overlap,
            rows, cols = np.nonzero(m)             # each stays in its box
            assert rows.min() >= y - 0.5 and rows.max() <= y + h and cols.min() >= x - 0.5 and cols.max() <= x + w
    for a, g in zip(ds.annotations, gt.annotations):
        assert set(a["wsis"]) == {"method", "valid", "box_iou"}
        assert a["wsis"]["method"] in ("grabcut", "ellipse") and a["wsis"]["valid"] == (a["wsis"]["method"] == "grabcut")
        m, t = rle_to_mask(a["segmentation"]), rle_to_mask(g["segmentation"])
        assert a["area"] == m.sum()
        ious.append((m & t).sum() / (m | t).sum())
    assert np.mean(ious) > 0.75  # textured shapes on texture: GrabCut does well
    info = json.loads(out.read_text())["info"]["wsis"]
    assert info["verb"] == "pseudolabel grabcut" and info["summary"]["masks"] == len(gt.annotations)
    assert "masks;" in r.stderr and "invalid" in r.stderr
    # the output is ready for evaluate
    r = runner.invoke(app, ["evaluate", str(synth_boxes / "gt.json"), str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["mAP"]["0.5"] > 0.7


def test_pool_gives_the_same_output(runner, synth_boxes, tmp_path):
    outs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}.json"
        assert run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--out", out,
                   "--workers", w).exit_code == 0
        outs.append(json.loads(out.read_text()))
    for o in outs:
        o["info"]["wsis"]["options"].pop("out", None)
    assert outs[0]["annotations"] == outs[1]["annotations"]


def test_images_cut_in_pieces_give_the_same_bytes(runner, synth_boxes, tmp_path, monkeypatch):
    monkeypatch.setattr(grabcut_dataset, "SPLIT", grabcut_dataset.SplitRule(boxes=2, pixels=0, chunk=1))  # every image
    out, outs = tmp_path / "o.json", []
    for w in (1, 2):
        r = run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--out", out, "--workers", w)
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_shards_merge_to_the_whole(runner, synth_boxes, tmp_path):
    whole = tmp_path / "whole.json"
    assert run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--out", whole, "--workers", 1).exit_code == 0
    parts = []
    for k in (1, 2, 3):
        p = tmp_path / f"part{k}.json"
        r = run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--out", p, "--shard", f"{k}/3",
                "--workers", 1)
        assert r.exit_code == 0, r.output
        parts.append(p)
    sizes = [len(json.loads(p.read_text())["images"]) for p in parts]
    assert sizes == [3, 3, 2]
    merged = tmp_path / "merged.json"
    r = runner.invoke(app, ["data", "merge", *map(str, parts), "--out", str(merged)])
    assert r.exit_code == 0, r.output
    a, b = json.loads(whole.read_text()), json.loads(merged.read_text())
    assert a["images"] == b["images"] and a["annotations"] == b["annotations"]
    for bad in ("4/3", "a/b", "0/2"):
        r = run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--shard", bad)
        assert r.exit_code == 2, (bad, r.output)


def test_shards_follow_id_rank_and_merge_by_id(runner, synth_boxes, tmp_path):
    ds = json.loads((synth_boxes / "box.json").read_text())
    new_id = {im["id"]: nid for im, nid in zip(ds["images"], [50, 3, 77, 12, 5, 90, 41, 8])}
    for im in ds["images"]:
        im["id"] = new_id[im["id"]]
    for a in ds["annotations"]:
        a["image_id"] = new_id[a["image_id"]]
    ds["images"].reverse()  # listed in no particular order
    boxes = write(tmp_path / "shuffled.json", ds)
    whole = tmp_path / "whole.json"
    assert run(runner, boxes, "--images", synth_boxes / "images", "--out", whole, "--workers", 1).exit_code == 0
    parts = []
    for k in (1, 2, 3):
        p = tmp_path / f"p{k}.json"
        assert run(runner, boxes, "--images", synth_boxes / "images", "--out", p, "--shard", f"{k}/3",
                   "--workers", 1).exit_code == 0
        parts.append(p)
    ranked = sorted(new_id.values())  # 3 5 8 12 41 50 77 90
    assert sorted(im["id"] for im in json.loads(parts[0].read_text())["images"]) == ranked[0::3]
    r = runner.invoke(app, ["data", "merge", *map(str, parts)])
    merged, w = json.loads(r.stdout), json.loads(whole.read_text())
    assert [im["id"] for im in merged["images"]] == ranked
    key = lambda recs: sorted(json.dumps(x, sort_keys=True) for x in recs)  # noqa: E731
    assert key(merged["images"]) == key(w["images"]) and key(merged["annotations"]) == key(w["annotations"])
    assert [x["options"]["shard"] for x in merged["info"]["wsis"]["inputs"]] == ["1/3", "2/3", "3/3"]


def test_annotation_order_does_not_matter(runner, synth_boxes, tmp_path):
    ds = json.loads((synth_boxes / "box.json").read_text())
    ds["annotations"].reverse()
    a_out, b_out = tmp_path / "a.json", tmp_path / "b.json"
    assert run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--out", a_out,
               "--workers", 1).exit_code == 0
    assert run(runner, write(tmp_path / "rev.json", ds), "--images", synth_boxes / "images", "--out", b_out,
               "--workers", 1).exit_code == 0
    a = {x["id"]: x for x in json.loads(a_out.read_text())["annotations"]}
    b = {x["id"]: x for x in json.loads(b_out.read_text())["annotations"]}
    assert a == b


def test_duplicate_boxes_leave_one_empty_invalid_mask(runner, tmp_path):
    boxes, images = degenerate_dataset(tmp_path)
    ds = json.loads(boxes.read_text())
    ds["annotations"] = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [20, 12, 24, 24]} for i in (1, 2)]
    r = run(runner, write(tmp_path / "dup.json", ds), "--images", images, "--out", tmp_path / "o.json", "--workers", 1,
            "--overlap", "smaller")
    assert r.exit_code == 0, r.output
    out = {a["id"]: a for a in json.loads((tmp_path / "o.json").read_text())["annotations"]}
    assert out[2]["area"] > 0 and out[2]["wsis"]["valid"]  # equal sizes: the larger id keeps the pixels
    assert out[1]["area"] == 0 and out[1]["wsis"]["method"] == "none" and not out[1]["wsis"]["valid"]
    assert "annotation 1 (image 1): its mask lost every pixel" in r.stderr


def test_output_and_log_checks_come_first(runner, synth_boxes, tmp_path):
    args = [synth_boxes / "box.json", "--images", synth_boxes / "images", "--workers", 1]
    r = run(runner, *args, "--out", tmp_path)
    assert r.exit_code == 2 and "is a folder" in " ".join(r.output.replace("│", " ").split())  # rich may wrap it
    assert not list(tmp_path.glob("*.resume.jsonl"))
    out = tmp_path / "o.json"
    Path(f"{out}.resume.jsonl").write_text('{"run": "x"}\n')
    r = run(runner, *args, "--out", out)
    assert r.exit_code == 1 and "holds an interrupted run: add --resume" in r.stderr
    assert Path(f"{out}.resume.jsonl").read_text() == '{"run": "x"}\n'  # untouched
    r = run(runner, *args, "--out", "/dev/null")
    assert r.exit_code == 0 and not Path("/dev/null.resume.jsonl").exists()
    r = run(runner, *args, "--out", "/dev/null", "--resume")
    assert r.exit_code == 2


def test_merge_conflicts(runner, synth_boxes, tmp_path):
    a = json.loads((synth_boxes / "box.json").read_text())
    b = json.loads((synth_boxes / "box.json").read_text())
    b["annotations"][0]["bbox"] = [0, 0, 5, 5]
    pa, pb = write(tmp_path / "a.json", a), write(tmp_path / "b.json", b)
    r = runner.invoke(app, ["data", "merge", str(pa), str(pb)])
    aid, iid = a["annotations"][0]["id"], a["annotations"][0]["image_id"]
    assert r.exit_code == 1
    assert r.stderr.strip() == f"wsis: error: {pb}: annotation {aid} (image {iid}): differs from the record of the same id in {pa}"
    b = json.loads((synth_boxes / "box.json").read_text())
    b["categories"][0]["name"] = "blob"
    r = runner.invoke(app, ["data", "merge", str(pa), str(write(tmp_path / "c.json", b))])
    assert r.exit_code == 1 and "categories differ" in r.stderr
    r = runner.invoke(app, ["data", "merge", str(pa), str(pa)])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["annotations"]) == len(a["annotations"])


def degenerate_dataset(tmp_path, kind="rgb"):
    """One 64x48 image with a red disc and every awkward box."""
    img = np.full((48, 64, 3), (60, 120, 60), np.uint8)
    cv2.circle(img, (32, 24), 12, (40, 40, 220), -1)  # BGR red
    path = tmp_path / "images" / "im.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "grey":
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    elif kind == "grey3":  # the same grey picture stored as three equal channels
        cv2.imwrite(str(path), cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR))
    elif kind == "rgba":
        cv2.imwrite(str(path), np.dstack([img, np.full((48, 64), 255, np.uint8)]))
    elif kind == "16bit":
        cv2.imwrite(str(path), img.astype(np.uint16) * 257)
    else:
        cv2.imwrite(str(path), img)
    boxes = {1: [20, 12, 24, 24],    # the disc
             2: [5, 5, 1, 1],        # 1 px
             3: [40, 40, 2, 2],      # 2 px
             4: [0, 0, 64, 48],      # the whole image
             5: [50, 30, 30, 30],    # partly outside: clipped
             6: [10, 10, 0, 8],      # zero width: skipped
             7: [100, 100, 5, 5],    # wholly outside: skipped
             8: [0, 20, 10, 28]}     # touching the border
    ds = {"images": [{"id": 1, "file_name": "im.png", "width": 64, "height": 48}],
          "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": b} for i, b in boxes.items()],
          "categories": [{"id": 1, "name": "thing"}]}
    return write(tmp_path / "boxes.json", ds), tmp_path / "images"


def test_degenerate_boxes(runner, tmp_path):
    boxes, images = degenerate_dataset(tmp_path)
    out = tmp_path / "out.json"
    r = run(runner, boxes, "--images", images, "--out", out, "--workers", 1)
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert f"{boxes}: annotation 5 (image 1): box [50, 30, 30, 30] extends outside the 64x48 image; clipped" in err
    assert f"{boxes}: annotation 6 (image 1): box [10, 10, 0, 8] has no area inside the 64x48 image; skipped" in err
    assert "annotation 7 (image 1)" in err and "2 boxes skipped" in err
    ds = load_dataset(out)
    by_id = {a["id"]: a for a in ds.annotations}
    assert sorted(by_id) == [1, 2, 3, 4, 5, 8]
    assert by_id[5]["bbox"] == [50.0, 30.0, 14.0, 18.0]
    assert by_id[2]["wsis"]["method"] == "ellipse" and by_id[2]["area"] >= 1
    assert by_id[1]["wsis"]["method"] == "grabcut"
    masks = np.stack([rle_to_mask(a["segmentation"]) for a in ds.annotations])
    assert masks.any(axis=(1, 2)).all()  # every kept box has a mask (--overlap none, the default: they may overlap)


@pytest.mark.parametrize("kind", ["grey", "rgba", "16bit"])
def test_image_formats(runner, tmp_path, kind):
    boxes, images = degenerate_dataset(tmp_path, kind)
    ref_boxes, ref_images = degenerate_dataset(tmp_path / "ref", "grey3" if kind == "grey" else "rgb")
    outs = []
    for b, i, name in ((boxes, images, "a.json"), (ref_boxes, ref_images, "b.json")):
        r = run(runner, b, "--images", i, "--out", tmp_path / name, "--workers", 1)
        assert r.exit_code == 0, r.output
        outs.append({a["id"]: a for a in json.loads((tmp_path / name).read_text())["annotations"]})
    yy, xx = np.mgrid[0:48, 0:64]
    disc = (xx - 32) ** 2 + (yy - 24) ** 2 <= 12 ** 2
    m = rle_to_mask(outs[0][1]["segmentation"])
    assert (m & disc).sum() / (m | disc).sum() > 0.85
    assert outs[0][1]["segmentation"] == outs[1][1]["segmentation"]  # same as the 8-bit RGB picture


def test_bad_inputs(runner, tmp_path, synth_boxes):
    gt = json.loads((synth_boxes / "gt.json").read_text())
    ilc = weaken(parse_dataset(gt), "ilc").to_json()
    r = run(runner, write(tmp_path / "ilc.json", ilc), "--images", synth_boxes / "images")
    a = ilc["annotations"][0]
    assert r.exit_code == 1
    assert r.stderr.strip().endswith(f"annotation {a['id']} (image {a['image_id']}): has no bbox; grabcut needs box labels")
    box = json.loads((synth_boxes / "box.json").read_text())
    box["images"][0]["width"] = 50
    box["annotations"] = [a for a in box["annotations"] if a["image_id"] == box["images"][0]["id"]
                          and a["bbox"][0] + a["bbox"][2] <= 50]
    out = tmp_path / "o.json"
    wrong = write(tmp_path / "wrong.json", box)
    r = run(runner, wrong, "--images", synth_boxes / "images", "--out", out)  # found before any work
    assert r.exit_code == 1 and r.stderr.strip().endswith(f"is 96x96 px but image 1 of {wrong} says 50x96")
    assert not out.exists()
    cut = tmp_path / "cut"  # pictures whose headers read but whose pixels do not decode
    cut.mkdir()
    for im in box["images"]:
        (cut / im["file_name"]).write_bytes((synth_boxes / "images" / im["file_name"]).read_bytes()[:200])
    box["images"][0]["width"] = 96
    for workers in (1, 2):  # in a worker process too, the error arrives as one line
        r = run(runner, write(tmp_path / "cut.json", box), "--images", cut, "--out", out, "--workers", workers)
        assert r.exit_code == 1, r.output
        assert r.stderr.strip().splitlines()[-1].startswith("wsis: error: ")
        assert "not an image OpenCV can decode" in r.stderr
        assert not out.exists()
    r = run(runner, synth_boxes / "box.json", "--images", tmp_path / "nowhere")
    assert r.exit_code == 2
    r = run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--resume")
    assert r.exit_code == 2 and "--out FILE" in r.output
    r = run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--fallback", "blob")
    assert r.exit_code == 2


def test_resume_after_interruption_gives_identical_output(runner, synth_boxes, tmp_path, monkeypatch):
    args = [synth_boxes / "box.json", "--images", synth_boxes / "images", "--workers", 1]
    full = tmp_path / "full.json"
    assert run(runner, *args, "--out", full).exit_code == 0

    out = tmp_path / "resumed.json"
    real = grabcut_dataset.grabcut_image
    calls = []

    def dies_after_three(job):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is killed part-way
        calls.append(job.image_id)
        return real(job)

    monkeypatch.setattr(grabcut_dataset, "grabcut_image", dies_after_three)
    r = run(runner, *args, "--out", out)
    assert r.exit_code != 0 and not out.exists()
    side = Path(f"{out}.resume.jsonl")
    assert f"3 finished images are kept in {side}: rerun with --resume" in r.stderr
    assert len(side.read_text().splitlines()) == 1 + 3  # header + three finished images

    calls.clear()
    monkeypatch.setattr(grabcut_dataset, "grabcut_image", lambda job: (calls.append(job.image_id), real(job))[1])
    r = run(runner, *args, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert len(calls) == 8 - 3  # finished images are not redone
    assert not side.exists()
    assert out.read_bytes() == full.read_bytes()  # byte for byte, provenance included


def test_killed_process_resumes(tmp_path):
    """A real SIGKILL mid-run, then --resume: the same output as an uninterrupted run."""
    root = tmp_path / "data"
    gt = synthesize(root, n=24, size=192, seed=4)
    (root / "box.json").write_text(json.dumps(weaken(parse_dataset(gt), "box").to_json()))
    base = [sys.executable, "-m", "wsis_cli", "pseudolabel", "grabcut", str(root / "box.json"),
            "--images", str(root / "images"), "--workers", "1", "--max-side", "0", "--iters", "8"]
    full = tmp_path / "full.json"
    subprocess.run(base + ["--out", str(full)], check=True, capture_output=True)
    out = tmp_path / "out.json"
    side = Path(f"{out}.resume.jsonl")
    proc = subprocess.Popen(base + ["--out", str(out)], stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not side.exists() or len(side.read_text().splitlines()) < 4):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed"
    done_before = len(side.read_text().splitlines()) - 1
    assert 3 <= done_before < 24
    subprocess.run(base + ["--out", str(out), "--resume"], check=True, capture_output=True)
    assert out.read_bytes() == full.read_bytes()


def test_sigterm_stops_the_workers_and_keeps_the_log(tmp_path):
    root = tmp_path / "data"
    gt = synthesize(root, n=24, size=192, seed=4)
    (root / "box.json").write_text(json.dumps(weaken(parse_dataset(gt), "box").to_json()))
    out = tmp_path / "out.json"
    side = Path(f"{out}.resume.jsonl")
    cmd = [sys.executable, "-m", "wsis_cli", "pseudolabel", "grabcut", str(root / "box.json"),
           "--images", str(root / "images"), "--workers", "2", "--max-side", "0", "--iters", "8", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not side.exists() or len(side.read_text().splitlines()) < 3):
        time.sleep(0.005)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no worker processes seen"
    proc.send_signal(signal.SIGTERM)  # to the main process only, as a batch scheduler does
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and not out.exists()
    assert "Traceback" not in err and "Exception ignored" not in err and "rerun with --resume" in err
    def alive():
        def running(pid):
            try:
                return "zombie" not in Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                return False

        return [c for c in children if running(c)]

    deadline = time.time() + 10  # a loaded machine may take a moment to deliver the parent-death signal
    while alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(), f"workers outlived the run: {alive()}"
    assert len(side.read_text().splitlines()) >= 3


def test_verb_defaults_are_the_library_defaults():
    import inspect

    from wsis_cli.cli.pseudolabel import RETRY_IOU, grabcut
    from wsis_cli.pseudo.grabcut import GrabCutConfig

    params = inspect.signature(grabcut).parameters
    lib = GrabCutConfig()
    for name in ("iters", "valid_iou", "fallback", "overlap", "margin", "max_side", "cleanup", "seed"):
        assert params[name].default == getattr(lib, name), name
    assert params["retry"].default is True and RETRY_IOU == lib.retry_iou


def test_a_garbled_resume_log_is_redone_from_the_first_bad_record(runner, tmp_path, monkeypatch):
    import wsis_cli.pseudo.grabcut_dataset as gd

    gt = synthesize(tmp_path, n=3, size=64, seed=1)
    boxes = tmp_path / "box.json"
    boxes.write_text(json.dumps(weaken(parse_dataset(gt), "box").to_json()))
    args = ["pseudolabel", "grabcut", str(boxes), "--images", str(tmp_path / "images"), "--workers", "1"]
    whole = tmp_path / "whole.json"
    assert runner.invoke(app, [*args, "--out", str(whole)]).exit_code == 0
    out = tmp_path / "out.json"
    log = Path(f"{out}.resume.jsonl")
    real, calls = gd.grabcut_image, []

    def dies_after_one_image(job):
        calls.append(job.image_id)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(gd, "grabcut_image", dies_after_one_image)
    assert runner.invoke(app, [*args, "--out", str(out)]).exit_code != 0
    monkeypatch.setattr(gd, "grabcut_image", real)
    kept = log.read_bytes()
    assert len(kept.splitlines()) == 2  # the header and one finished image
    for garbage in (b'{"image_id": 2, "result": {"anns": "oops"}}\n', b"\xff\xfe\x00junk\n",
                    b'[1, 2]\n'):
        log.write_bytes(kept + garbage)  # a wrongly shaped record, binary junk, a record of another type
        r = runner.invoke(app, [*args, "--out", str(out), "--resume"])
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
        assert out.read_bytes() == whole.read_bytes() and not log.exists()
        out.unlink()
    log.write_bytes(kept.replace(b'"image_id": ', b'"image_id": "x', 1).replace(b', "result"', b'", "result"', 1))
    r = runner.invoke(app, [*args, "--out", str(out), "--resume"])  # the finished record itself garbled
    assert r.exit_code == 0 and out.read_bytes() == whole.read_bytes()
    log.write_bytes(b"\xff\xfe a binary header\n")
    r = runner.invoke(app, [*args, "--out", str(out), "--resume"])
    assert r.exit_code == 1 and "this resume file belongs to another run" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("policy", ["smaller", "larger", "lower-edge", "evidence", "none"])
def test_overlap_policies(runner, synth_boxes, tmp_path, policy):
    out = tmp_path / f"{policy}.json"
    r = run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--out", out, "--workers", 1,
            "--overlap", policy, "--quiet")
    assert r.exit_code == 0, r.output
    ds = load_dataset(out)
    assert json.loads(out.read_text())["info"]["wsis"]["options"]["overlap"] == policy
    overlapping = 0
    for im in ds.images:
        masks = np.stack([rle_to_mask(a["segmentation"]) for a in ds.anns_by_image[im["id"]]])
        overlapping += int((masks.sum(0) > 1).sum())
    assert (overlapping == 0) == (policy != "none")  # synthetic shapes overlap: only none keeps that


def test_bad_overlap_is_a_usage_error(runner, synth_boxes, tmp_path):
    r = run(runner, synth_boxes / "box.json", "--images", synth_boxes / "images", "--out", tmp_path / "o.json",
            "--overlap", "front")
    assert r.exit_code == 2 and "--overlap" in r.output and not (tmp_path / "o.json").exists()
