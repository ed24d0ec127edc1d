"""`wsis select`: which weakly labelled images to annotate fully."""

from __future__ import annotations

from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, write_output
from wsis_cli.cli.options import Out, Quiet, Seed, parse_floats


@cli_errors
def select(
    scores: Annotated[str, typer.Argument(help="Per-image scores JSON ({'images': [{'image_id', 'score'}]}); '-' = stdin.")],
    n: Annotated[int, typer.Option("--n", min=0, help="How many images to select.")],
    beta: Annotated[list[str] | None, typer.Option("--beta", help="Target score(s) for 'closest'; repeat or comma-separate to split --n evenly.")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="closest, random, lowest or highest.")] = "closest",
    exclude: Annotated[str | None, typer.Option("--exclude", help="COCO dataset whose images are never selected (already strong).")] = None,
    seed: Seed = 0,
    out: Out = "-",
    quiet: Quiet = False,
) -> None:
    """Select images to send to annotators: by default the n whose score is closest to β."""
    import numpy as np

    from wsis_cli.coco import display_name, load_dataset, provenance, read_json
    from wsis_cli.selection import STRATEGIES, parse_scores
    from wsis_cli.selection import select as choose

    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"must be one of {', '.join(STRATEGIES)}", param_hint="--strategy")
    betas = parse_floats(beta, option="--beta") or [0.5]
    s = parse_scores(read_json(scores), path=display_name(scores))
    excluded = {im["id"] for im in load_dataset(exclude).images} if exclude else set()
    ids = choose(s, n=n, strategy=strategy, betas=betas, exclude=excluded, seed=seed)
    rec = {
        "image_ids": [int(i) for i in ids],
        "strategy": strategy,
        "beta": (betas[0] if len(betas) == 1 else betas) if strategy == "closest" else None,
        "n": int(ids.size),
        "info": {"wsis": provenance("select", {"scores": scores, "n": n, "beta": betas, "strategy": strategy,
                                               "exclude": exclude}, seed)},
    }
    write_output(out, rec)
    picked = s.scores[np.isin(s.image_ids, ids)]
    picked = picked[~np.isnan(picked)]
    summary = f"selected {ids.size} of {s.image_ids.size} images"
    if picked.size:
        summary += f"; their scores: mean {picked.mean():.3f}, range {picked.min():.3f}..{picked.max():.3f}"
    info(summary)
