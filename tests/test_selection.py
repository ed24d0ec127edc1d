
import numpy as np
import pytest

from wsis_cli.errors import InputError, WsisError
from wsis_cli.selection import ImageScores, parse_scores, select, split_evenly


def scores(pairs):
    return parse_scores({"images": [{"image_id": i, "score": s} for i, s in pairs]})


S = scores([(1, 0.1), (2, 0.55), (3, 0.45), (4, 0.9), (5, 0.5), (6, None), (7, 0.5)])


def test_closest_with_ties_by_id():
    # |s - 0.5|: 5 -> 0, 7 -> 0, 2 -> .05, 3 -> .05, 4 -> .4, 1 -> .4. In floating point
    # |0.45 - 0.5| < |0.55 - 0.5|, yet on paper they tie, and ties go to the smaller id.
    assert select(S, n=4, betas=[0.5]).tolist() == [5, 7, 2, 3]
    assert select(S, n=6, betas=[0.5]).tolist() == [5, 7, 2, 3, 1, 4]
    assert select(S, n=1, betas=[0.5], exclude={5, 7}).tolist() == [2]


def test_several_betas_split_n_evenly_without_repeats():
    ids = select(S, n=5, betas=[0.0, 0.5, 1.0])
    assert split_evenly(5, 3) == [2, 2, 1]
    assert ids.tolist() == [1, 3, 5, 7, 4]  # beta 0: 0.1, 0.45; beta 0.5: 0.5, 0.5; beta 1: 0.9
    assert len(set(ids.tolist())) == 5


def test_exclude_lowest_highest():
    assert select(S, n=2, betas=[0.5], exclude={5, 7}).tolist() == [2, 3]
    assert select(S, n=3, strategy="lowest").tolist() == [1, 3, 5]
    assert select(S, n=3, strategy="highest").tolist() == [4, 2, 5]


def test_random_is_seeded_and_may_take_unscored():
    a = select(S, n=7, strategy="random", seed=3)
    assert sorted(a.tolist()) == [1, 2, 3, 4, 5, 6, 7]
    assert np.array_equal(a, select(S, n=7, strategy="random", seed=3))
    assert not all(np.array_equal(select(S, n=3, strategy="random", seed=s), a[:3]) for s in range(5))


def test_too_many_is_an_error():
    with pytest.raises(WsisError, match="asked for 7 images but only 6 are eligible"):
        select(S, n=7, betas=[0.5])
    with pytest.raises(WsisError, match="only 4 are eligible"):
        select(S, n=5, betas=[0.5], exclude={1, 2})


def test_empty_and_zero():
    empty = ImageScores(np.zeros(0, np.int64), np.zeros(0))
    assert select(empty, n=0, betas=[0.5]).shape == (0,)
    assert select(S, n=0, betas=[0.5]).tolist() == []


@pytest.mark.parametrize("obj,msg", [
    ([], "'images' list"),
    ({"images": [{"score": 0.5}]}, "images\\[0\\]: 'image_id'"),
    ({"images": [{"image_id": 1, "score": "x"}]}, "image 1: 'score'"),
    ({"images": [{"image_id": 1, "score": 0.1}, {"image_id": 1, "score": 0.2}]}, "image 1: duplicate"),
])
def test_bad_scores(obj, msg):
    with pytest.raises(InputError, match=msg):
        parse_scores(obj, path="s.json")


