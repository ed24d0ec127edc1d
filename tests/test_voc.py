import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from wsis_cli.cli.app import app
from wsis_cli.coco import load_dataset, rle_to_mask
from wsis_cli.errors import InputError
from wsis_cli.voc import convert_voc, read_index_png, voc_colormap


def write_palette_png(path: Path, idx: np.ndarray) -> None:
    """An 8-bit palette PNG with VOC's palette, as the VOC devkit writes them."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w = idx.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in idx.astype(np.uint8))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
           + chunk(b"PLTE", voc_colormap().tobytes()) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


def scene():
    """A 24x32 scene: a person (instance 1) and a dog (instance 2) with void borders, touching."""
    obj = np.zeros((24, 32), np.uint8)
    cls = np.zeros((24, 32), np.uint8)
    obj[4:20, 3:12], cls[4:20, 3:12] = 1, 15   # person
    obj[10:22, 12:30], cls[10:22, 12:30] = 2, 12  # dog
    obj[3, 3:12] = cls[3, 3:12] = 255            # void border above the person
    obj[10:22, 12] = cls[10:22, 12] = 255        # void between the two
    return obj, cls


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    obj, cls = scene()
    for stem in ("2007_000032", "2008_000123"):
        write_palette_png(root / "SegmentationObject" / f"{stem}.png", obj)
        write_palette_png(root / "SegmentationClass" / f"{stem}.png", cls)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), np.zeros((24, 32, 3), np.uint8))
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(
            "<annotation><size><width>32</width><height>24</height><depth>3</depth></size></annotation>")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2008_000123\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000123\n")
    return root


def test_palette_png_decodes_to_indices(tmp_path):
    obj, _ = scene()
    write_palette_png(tmp_path / "o.png", obj)
    np.testing.assert_array_equal(read_index_png(tmp_path / "o.png"), obj)
    cv2.imwrite(str(tmp_path / "grey.png"), obj)  # plain 8-bit indices work too
    np.testing.assert_array_equal(read_index_png(tmp_path / "grey.png"), obj)


def test_voc_layout(voc_root):
    ds = convert_voc(voc_root, split="train")
    assert [im["id"] for im in ds["images"]] == [2007000032, 2008000123]
    assert ds["images"][0] == {"id": 2007000032, "file_name": "2007_000032.jpg", "width": 32, "height": 24}
    anns = [a for a in ds["annotations"] if a["image_id"] == 2007000032]
    assert [a["category_id"] for a in anns] == [15, 12]
    assert ds["categories"][14]["name"] == "person"
    obj, _ = scene()
    for a, idx in zip(anns, (1, 2)):
        m = rle_to_mask(a["segmentation"])
        np.testing.assert_array_equal(m, obj == idx)  # void pixels (255) belong to no mask
        assert a["area"] == (obj == idx).sum()
    assert anns[0]["bbox"] == [3.0, 4.0, 9.0, 16.0]
    assert len(convert_voc(voc_root, split="val")["images"]) == 1


def test_sbd_layout(tmp_path):
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    obj, _ = scene()
    (root / "inst").mkdir(parents=True)
    (root / "img").mkdir()
    savemat(root / "inst" / "2008_000002.mat",
            {"GTinst": {"Segmentation": obj, "Categories": np.array([[15], [12]], np.uint8), "Boundaries": []}})
    cv2.imwrite(str(root / "img" / "2008_000002.jpg"), np.zeros((24, 32, 3), np.uint8))
    (root / "train.txt").write_text("2008_000002\n")
    ds = convert_voc(tmp_path / "benchmark_RELEASE", split="train")
    assert [(a["category_id"], a["area"]) for a in ds["annotations"]] == [(15, (obj == 1).sum()), (12, (obj == 2).sum())]


def test_faults(voc_root, tmp_path):
    (voc_root / "SegmentationClass" / "2008_000123.png").unlink()
    with pytest.raises(InputError, match=r"2008_000123.png: missing \(image 2008_000123 is in the split list\)"):
        convert_voc(voc_root, split="train")
    bad = tmp_path / "odd.png"
    cv2.imwrite(str(bad), np.full((4, 4, 3), 7, np.uint8))
    with pytest.raises(InputError, match="not in VOC's palette"):
        read_index_png(bad)


def test_cli(runner, voc_root, tmp_path):
    out = tmp_path / "gt.json"
    r = runner.invoke(app, ["data", "voc", str(voc_root), "--split", "train", "--out", str(out)])
    assert r.exit_code == 0, r.output
    ds = load_dataset(out)
    assert len(ds.images) == 2 and ds.levels()["full"] == 4
    assert json.loads(out.read_text())["info"]["wsis"]["verb"] == "data voc"
    r = runner.invoke(app, ["data", "voc", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "neither a VOC 2012 tree" in r.stderr
    r = runner.invoke(app, ["data", "voc", str(voc_root), "--split", "test"])
    assert r.exit_code == 1 and "test.txt: split list not found" in r.stderr


def test_broken_files_are_one_line_errors(voc_root, tmp_path):
    xml = voc_root / "Annotations" / "2007_000032.xml"
    xml.write_text("<annotation><size><width>32")
    with pytest.raises(InputError, match="2007_000032.xml: not valid XML"):
        convert_voc(voc_root, split="train")
    xml.write_text("<annotation><size><width>abc</width><height>24</height></size></annotation>")
    with pytest.raises(InputError, match="width/height are not integers"):
        convert_voc(voc_root, split="train")
    xml.write_text("<annotation><size><width>30</width><height>24</height></size></annotation>")
    with pytest.raises(InputError, match="size 30x24 differs from the segmentation's 32x24"):
        convert_voc(voc_root, split="train")
    sbd = tmp_path / "sbd"
    (sbd / "inst").mkdir(parents=True)
    (sbd / "img").mkdir()
    (sbd / "inst" / "a.mat").write_bytes(b"MATLAB 5.0 garbage" * 20)
    cv2.imwrite(str(sbd / "img" / "a.jpg"), np.zeros((4, 4, 3), np.uint8))
    (sbd / "train.txt").write_text("a\n")
    with pytest.raises(InputError, match="a.mat: not an SBD GTinst file"):
        convert_voc(sbd, split="train")
    (sbd / "train.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="train.txt: not a text file"):
        convert_voc(sbd, split="train")
