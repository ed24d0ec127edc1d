"""`subset_dataset`: chosen ids, K random images, the complement, and unknown ids."""

from __future__ import annotations

import pytest

from wsis_cli.coco import parse_dataset
from wsis_cli.errors import InputError, WsisError
from wsis_cli.subset import subset_dataset


def _ds(two_images):
    return parse_dataset(two_images, path="gt.json")


def test_ids_and_complement(two_images):
    sub = subset_dataset(_ds(two_images), ids=[2])
    assert [im["id"] for im in sub.images] == [2] and [a["id"] for a in sub.annotations] == [3]
    assert isinstance(sub.annotations[0]["segmentation"]["counts"], str)  # compressed RLE
    rest = subset_dataset(_ds(two_images), ids=[2], complement=True)
    assert [im["id"] for im in rest.images] == [1] and [a["id"] for a in rest.annotations] == [1, 2]


def test_random_images_are_seeded(two_images):
    one = [im["id"] for im in subset_dataset(_ds(two_images), n=1, seed=3).images]
    assert one == [im["id"] for im in subset_dataset(_ds(two_images), n=1, seed=3).images]
    assert {tuple(im["id"] for im in subset_dataset(_ds(two_images), n=1, seed=s).images) for s in range(8)} == \
        {(1,), (2,)}
    assert subset_dataset(_ds(two_images), n=0).images == []


def test_errors(two_images):
    with pytest.raises(InputError, match=r"^ids.txt: image id 9 is not in gt.json \(2 such ids\)$"):
        subset_dataset(_ds(two_images), ids=[1, 9, 10], ids_source="ids.txt")
    with pytest.raises(WsisError, match="gt.json: asked for 3 images but it has 2"):
        subset_dataset(_ds(two_images), n=3)
    with pytest.raises(WsisError, match="exactly one of ids or n"):
        subset_dataset(_ds(two_images))
