import struct

import cv2
import numpy as np
import pytest

from wsis_cli.errors import InputError, WsisError
from wsis_cli.images import check_images, image_size, read_image, write_image


def test_rgb_roundtrip(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 200  # red
    write_image(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)


def test_grey_rgba_and_16bit(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    g = read_image(tmp_path / "g.png")
    assert g.shape == (4, 5, 3) and (g[..., 0] == grey).all() and (g[..., 2] == grey).all()

    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 255, 0  # red, fully transparent: alpha is dropped
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    a = read_image(tmp_path / "a.png")
    assert a.shape == (4, 5, 3) and (a[..., 0] == 255).all() and (a[..., 1:] == 0).all()

    deep = np.full((3, 3), 65535, np.uint16)
    deep[0, 0] = 32896  # 128.5 * 256
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    d = read_image(tmp_path / "d.png")
    assert d.dtype == np.uint8 and d[1, 1, 0] == 255 and d[0, 0, 0] == 128


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :5] = 255  # white strip on the left
    ok, jpg = cv2.imencode(".jpg", img)
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(tiff) + 8) + b"Exif\x00\x00" + tiff
    data = jpg.tobytes()
    (tmp_path / "r.jpg").write_bytes(data[:2] + app1 + data[2:])
    r = read_image(tmp_path / "r.jpg")
    assert r.shape == (20, 10, 3)  # orientation 6: rotated 90° clockwise for display
    assert r[:5].mean() > 200 and r[-5:].mean() < 50  # the left strip is now on top
    assert image_size(tmp_path / "r.jpg") == (10, 20, True)  # the header gives the shown size too


def test_missing_and_undecodable(tmp_path):
    with pytest.raises(WsisError, match="image file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "x.png").write_text("not a png")
    with pytest.raises(WsisError, match="not an image OpenCV can decode"):
        read_image(tmp_path / "x.png")


def test_image_size_and_check_images_read_headers_only(tmp_path, capfd):
    write_image(tmp_path / "a.png", np.zeros((12, 30, 3), np.uint8))
    assert image_size(tmp_path / "a.png") == (30, 12, False)
    (tmp_path / "t.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])  # header whole, pixels cut off
    assert image_size(tmp_path / "t.png")[:2] == (30, 12)
    records = [{"id": 1, "height": 12, "width": 30}, {"id": 2, "height": 12, "width": 31}]
    check_images(records[:1], [tmp_path / "a.png"], "d.json")
    with pytest.raises(InputError, match=r"a.png: is 30x12 px but image 2 of d.json says 31x12$"):
        check_images(records[1:], [tmp_path / "a.png"], "d.json")
    check_images(records[1:], [tmp_path / "a.png"], "d.json", sizes=False)
    (tmp_path / "x.png").write_text("not a png")
    with pytest.raises(InputError, match=r"x.png: not an image file, its header cannot be read \(image 1 of d.json\)"):
        check_images(records[:1], [tmp_path / "x.png"], "d.json")
    with pytest.raises(WsisError, match="not an image OpenCV can decode"):
        read_image(tmp_path / "t.png")
    assert "libpng" not in capfd.readouterr().err  # the decoder's own complaint stays off stderr
