"""The shared training loop: steps, learning rates, loss sums, the divergence check, failed samples,
read-ahead loading, threads and the interrupt note, on a tiny hand-made model."""

from __future__ import annotations

import math
import time

import pytest
import torch

from wsis_cli.engine.loop import (FailedSample, checked_collate, default_threads, interrupt_note,
                                  keeps_torch_threads, make_loader, make_scaler, prefetched, set_threads, train_epoch)
from wsis_cli.errors import WsisError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(lr: float = 0.1):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return model, opt


def _step(model):
    def step(batch):
        x, y = batch
        loss = ((model(x).squeeze(1) - y) ** 2).mean()
        return {"loss": loss, "half": loss * 0.5}, len(y), {"count": 1}
    return step


def _batches(n: int = 3, size: int = 4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 2, generator=g), torch.randn(size, generator=g)) for _ in range(n)]


def test_an_epoch_steps_sums_and_sets_the_learning_rate():
    model, opt = _setup()
    lrs, seen = [], []
    r = train_epoch(_batches(), _step(model), opt, make_scaler(False),
                    set_lr=lambda it: (lrs.append(it), [g.__setitem__("lr", 0.1 / (it + 1)) for g in opt.param_groups],
                                       0.1 / (it + 1))[-1],
                    epoch=0, first_iter=6, total_iters=9, use_amp=False, device=torch.device("cpu"),
                    progress=lambda done, total: seen.append((done, total)))
    assert lrs == [6, 7, 8] and r.lr == pytest.approx(0.1 / 9) and opt.param_groups[0]["lr"] == pytest.approx(0.1 / 9)
    assert r.seen == 12 and r.extras == {"count": 3} and seen == [(7, 9), (8, 9), (9, 9)]
    assert r.sums["half"] == pytest.approx(r.sums["loss"] * 0.5)
    assert r.seconds > 0 and 0 <= r.load_share <= 1


def test_the_same_batches_give_the_weights_of_a_plain_loop():
    model, opt = _setup()
    train_epoch(_batches(), _step(model), opt, make_scaler(False), set_lr=lambda it: 0.1, epoch=0, first_iter=0,
                total_iters=3, use_amp=False, device=torch.device("cpu"))
    ref, ref_opt = _setup()
    for x, y in _batches():
        loss = ((ref(x).squeeze(1) - y) ** 2).mean()
        ref_opt.zero_grad()
        (loss + loss * 0.5).backward()
        ref_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_clipping_bounds_the_gradient():
    model, opt = _setup(lr=1.0)
    big = [(torch.full((4, 2), 100.0), torch.zeros(4))]
    before = [p.detach().clone() for p in model.parameters()]
    train_epoch(big, _step(model), opt, make_scaler(False), set_lr=lambda it: 1.0, epoch=0, first_iter=0,
                total_iters=1, use_amp=False, device=torch.device("cpu"), clip_norm=0.5)
    moved = math.sqrt(sum(float(((p.detach() - q) ** 2).sum()) for p, q in zip(model.parameters(), before)))
    assert moved == pytest.approx(0.5, rel=1e-4)  # lr 1 x a gradient clipped to norm 0.5


def test_divergence_and_failed_samples_are_one_line_errors():
    model, opt = _setup()
    nan = [(torch.full((2, 2), float("nan")), torch.zeros(2))]
    with pytest.raises(WsisError, match=r"training diverged \(loss nan at epoch 3, iteration 1\): lower the rate"):
        train_epoch(nan, _step(model), opt, make_scaler(False), set_lr=lambda it: 0.1, epoch=2, first_iter=0,
                    total_iters=1, use_amp=False, device=torch.device("cpu"), hint="lower the rate")
    with pytest.raises(WsisError, match="^x.png: broken$"):
        train_epoch([FailedSample("x.png: broken")], _step(model), opt, make_scaler(False), set_lr=lambda it: 0.1,
                    epoch=0, first_iter=0, total_iters=1, use_amp=False, device=torch.device("cpu"))
    collate = checked_collate(lambda items: sum(items))
    assert collate([1, 2]) == 3 and isinstance(collate([1, FailedSample("m"), 2]), FailedSample)


class _Items(torch.utils.data.Dataset):
    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at

    def __len__(self):
        return 10

    def __getitem__(self, key):
        if key == self.fail_at:
            raise RuntimeError(f"item {key} is broken")
        time.sleep(0.002)
        return key


def test_read_ahead_keeps_the_order_and_raises_where_the_batch_would_be():
    batches = [[0, 1], [2, 3], [4]]
    loader = make_loader(_Items(), batches, collate=list, workers=0, device=torch.device("cpu"))
    assert list(loader) == batches
    with pytest.raises(RuntimeError, match="item 3 is broken"):
        list(make_loader(_Items(fail_at=3), batches, collate=list, workers=0, device=torch.device("cpu")))
    it = prefetched(iter(range(1000)), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # stopping early ends the reading thread
    assert list(prefetched([])) == []


def test_threads(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert default_threads(torch.device("cpu")) == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert default_threads(torch.device("cpu")) == 1
    before = torch.get_num_threads()

    @keeps_torch_threads
    def train():
        assert set_threads(2, torch.device("cpu")) == 2
        return "done"

    assert train() == "done" and torch.get_num_threads() == before


def test_interrupt_note():
    said = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt_note(said.append, lambda: "kept 2 epochs"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with interrupt_note(said.append, lambda: None):
            raise KeyboardInterrupt
    assert said == ["kept 2 epochs"]
