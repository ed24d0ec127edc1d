"""`merge_datasets`: joining by id, and --renumber for label sets from different sources."""

from __future__ import annotations

import pytest

from wsis_cli.coco import parse_dataset
from wsis_cli.errors import InputError
from wsis_cli.merge import made_differently, merge_datasets

from conftest import ann, make_dataset, rect_mask


def _two_sources():
    strong = make_dataset([(1, 20, 20)], [ann(1, 1, rect_mask(20, 20, 2, 2, 8, 8)),
                                          ann(2, 1, rect_mask(20, 20, 10, 10, 18, 18))])
    pseudo = make_dataset([(2, 20, 20)], [ann(1, 2, rect_mask(20, 20, 0, 0, 5, 5), score=0.9)])
    return parse_dataset(strong, path="strong.json"), parse_dataset(pseudo, path="pseudo.json")


def test_clashing_annotation_ids_need_renumber():
    strong, pseudo = _two_sources()
    with pytest.raises(InputError, match="pseudo.json: annotation 1 \\(image 2\\): differs from the record"):
        merge_datasets([strong, pseudo])
    merged = merge_datasets([strong, pseudo], renumber=True)
    assert [(a["id"], a["image_id"]) for a in merged.annotations] == [(1, 1), (2, 1), (3, 2)]
    assert merged.annotations[2]["score"] == 0.9 and [im["id"] for im in merged.images] == [1, 2]


def test_renumber_refuses_one_image_labelled_by_two_inputs():
    strong, _ = _two_sources()
    again = parse_dataset(make_dataset([(1, 20, 20)], [ann(7, 1, rect_mask(20, 20, 1, 1, 4, 4))]), path="again.json")
    with pytest.raises(InputError, match="again.json: annotation 7 \\(image 1\\): has annotations of image 1, as "
                                         "strong.json has"):
        merge_datasets([strong, again], renumber=True)


def test_made_differently_ignores_shards_and_input_names():
    part = {"verb": "pseudolabel grabcut", "options": {"boxes": "a.json", "shard": "1/2", "iters": 5}}
    other_shard = {"verb": "pseudolabel grabcut", "options": {"boxes": "b.json", "shard": "2/2", "iters": 5}}
    assert not made_differently([part, other_shard, None, "text"])
    assert made_differently([part, {**part, "options": {**part["options"], "iters": 3}}])
    assert not made_differently([])
