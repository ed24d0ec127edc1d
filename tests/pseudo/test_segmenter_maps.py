"""Score maps from a segmenter: softmax planes of each image's labelled classes, in the scoremaps format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ann, make_dataset, rect_mask
from wsis_cli.coco import parse_dataset
from wsis_cli.errors import WsisError
from wsis_cli.images import write_image
from wsis_cli.models.segmenter import build_segmenter
from wsis_cli.pseudo.segmenter_maps import class_probabilities, predict_maps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random (untrained) resnet18 segmenter for categories 7, 3 saved as a wsis-segmenter checkpoint."""
    torch.manual_seed(0)
    model = build_segmenter("resnet18", num_classes=2, weights="none")
    path = tmp_path_factory.mktemp("seg") / "seg.pt"
    torch.save({"format": "wsis-segmenter", "version": 1, "model": model.state_dict(),
                "config": {"backbone": "resnet18", "num_classes": 2, "category_ids": [7, 3],
                           "category_names": ["b", "a"], "size": 32}}, path)
    return path, model.eval()


def test_class_probabilities_are_a_softmax_over_background_and_classes(checkpoint):
    _, model = checkpoint
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    p = class_probabilities(model, rgb, 32, torch.device("cpu"))
    assert p.shape == (3, 32, 32) and p.dtype == np.float32
    assert np.allclose(p.sum(0), 1.0, atol=1e-5) and (p >= 0).all()
    sub = class_probabilities(model, rgb, 32, torch.device("cpu"), [0, 2])  # class 1 known absent
    assert sub.shape == (2, 32, 32) and np.allclose(sub.sum(0), 1.0, atol=1e-5)
    assert np.allclose(sub[1], p[2] / (p[0] + p[2]), atol=1e-5) and (sub[1] >= p[2] - 1e-6).all()


def test_predict_maps_writes_the_labelled_planes(checkpoint, tmp_path):
    path, model = checkpoint
    d = make_dataset([(1, 40, 56), (2, 40, 56), (3, 40, 56)], [
        ann(1, 1, rect_mask(40, 56, 5, 5, 20, 20), 3),
        {"id": 2, "image_id": 1, "category_id": 7, "count": None},
        {"id": 3, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5]}], n_cats=0)
    d["categories"] = [{"id": 3, "name": "a"}, {"id": 5, "name": "c"}, {"id": 7, "name": "b"}]
    ds = parse_dataset(d)
    rng = np.random.default_rng(1)
    for im in ds.images:
        write_image(tmp_path / im["file_name"], rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    warnings, done = [], []
    summary = predict_maps(ds, images_dir=tmp_path, model=path, out_dir=tmp_path / "maps", device="cpu",
                           warn=warnings.append, progress=lambda n, t: done.append((n, t)))
    assert summary == {"images": 3, "written": 1, "unlabelled": 1, "unknown_only": 1}
    assert done == [(1, 3), (2, 3), (3, 3)]
    assert len(warnings) == 1 and "not trained on categories [5] (c)" in warnings[0]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["000001.npz"]
    with np.load(tmp_path / "maps" / "000001.npz") as z:
        ids, scores = z["category_ids"].tolist(), z["scores"]
    assert ids == [3, 7]  # sorted by id; planes 2 (id 3) and 1 (id 7) of the model
    from wsis_cli.images import read_image

    p = class_probabilities(model, read_image(tmp_path / "000001.png"), 32, torch.device("cpu"))
    assert np.allclose(scores, p[[2, 1]], atol=1e-6)
    with pytest.raises(WsisError, match="holds score maps already"):  # no earlier map outlives a run
        predict_maps(ds, images_dir=tmp_path, model=path, out_dir=tmp_path / "maps", device="cpu")
    (tmp_path / "maps" / "stale.npz").write_bytes(b"")
    predict_maps(ds, images_dir=tmp_path, model=path, out_dir=tmp_path / "maps", device="cpu", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["000001.npz"]
    (tmp_path / "file").write_text("")
    with pytest.raises(WsisError, match="is a file"):
        predict_maps(ds, images_dir=tmp_path, model=path, out_dir=tmp_path / "file", device="cpu")
