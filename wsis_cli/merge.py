"""Join COCO datasets that share one label set, e.g. the shard outputs of a per-image verb.

Categories must agree. An image or annotation id present in several inputs must be the same
record in each (then it is kept once); a different record under the same id is a conflict.
The output lists images and annotations by id, so merging the shards of a run gives the
records of the unsharded run in id order.
"""

from __future__ import annotations

import json

from wsis_cli.coco import Dataset
from wsis_cli.errors import InputError, WsisError

__all__ = ["merge_datasets", "made_differently"]


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def merge_datasets(datasets: list[Dataset], *, renumber: bool = False) -> Dataset:
    """Join ``datasets`` (see the module docstring). With ``renumber``, annotations are not
    matched by id: every input's annotations are kept and numbered 1..N in input order (for
    label sets from different sources, e.g. strong masks plus pseudo-labels, whose ids clash);
    an image still may not hold annotations from two inputs."""
    if not datasets:
        raise WsisError("nothing to merge")
    first = datasets[0]
    cats = {c["id"]: c for c in first.categories}
    images: dict[int, tuple[dict, str]] = {}
    anns: dict[int, tuple[dict, str]] = {}
    owners: dict[int, str] = {}
    renumbered: list[dict] = []
    for ds in datasets:
        mine = {c["id"]: c for c in ds.categories}
        if mine.keys() != cats.keys() or any(mine[k]["name"] != cats[k]["name"] for k in cats):
            raise InputError(ds.path, f"its categories differ from those of {first.path}; only datasets with "
                                      "one label set can be merged")
        for im in ds.images:
            seen = images.get(im["id"])
            if seen is None:
                images[im["id"]] = (im, ds.path)
            elif not _same(seen[0], im):
                raise InputError(ds.path, f"differs from the record of the same id in {seen[1]}", f"image {im['id']}")
        if renumber:
            for a in ds.annotations:
                owner = owners.setdefault(a["image_id"], ds.path)
                if owner != ds.path:
                    raise InputError(ds.path, f"has annotations of image {a['image_id']}, as {owner} has; with "
                                              "--renumber each image's labels must come from one input",
                                     f"annotation {a['id']} (image {a['image_id']})")
                renumbered.append({**a, "id": len(renumbered) + 1})
            continue
        for a in ds.annotations:
            seen = anns.get(a["id"])
            if seen is None:
                anns[a["id"]] = (a, ds.path)
            elif not _same(seen[0], a):
                raise InputError(ds.path, f"differs from the record of the same id in {seen[1]}",
                                 f"annotation {a['id']} (image {a['image_id']})")
    annotations = renumbered if renumber else [anns[k][0] for k in sorted(anns)]
    return Dataset(images=[images[k][0] for k in sorted(images)], annotations=annotations,
                   categories=first.categories, info={k: v for k, v in first.info.items() if k != "wsis"},
                   licenses=first.licenses, path="<merged>")


def made_differently(provenances: list) -> bool:
    """Whether the inputs' ``info.wsis`` records show different options (shard and input names
    aside): parts of one sharded run never do."""
    made = {json.dumps({k: v for k, v in (w.get("options") or {}).items() if k not in ("shard", "boxes")},
                       sort_keys=True, default=str)
            for w in provenances if isinstance(w, dict)}
    return len(made) > 1
