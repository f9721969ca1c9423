"""A batch stops inside its forward pass once nobody waits for it (`service/cancellation.py`), on its own thread
only, and computes exactly as before when its requests still wait."""

from __future__ import annotations

import threading

import pytest
import torch

from model import VQModel
from service.cancellation import stop_when
from service.errors import BatchAbandoned
from tests.support.checkpoints import TINY_RGB


def tiny() -> VQModel:
    torch.manual_seed(0)
    return VQModel(**TINY_RGB).eval()


def test_a_batch_nobody_waits_for_stops_at_a_module_boundary() -> None:
    model = tiny()
    calls = {"n": 0}

    def abandoned() -> bool:  # its owners leave after a few modules have run
        calls["n"] += 1
        return calls["n"] > 5

    with torch.inference_mode(), pytest.raises(BatchAbandoned), stop_when(abandoned):
        model(torch.zeros(1, 3, 32, 32))
    assert calls["n"] == 6  # checked at every module and stopped at the first check that said so


def test_a_batch_still_awaited_computes_exactly_as_without_the_check() -> None:
    model = tiny()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        plain = model(x)
        with stop_when(lambda: False):
            checked = model(x)
        with stop_when(None):
            unchecked = model(x)
    assert torch.equal(plain, checked)
    assert torch.equal(plain, unchecked)


def test_the_check_belongs_to_the_thread_that_set_it() -> None:
    """Another thread's forward passes (another engine, a test's reference model) never see this batch's check."""
    model = tiny()
    other: list[BaseException | None] = []

    def elsewhere() -> None:
        try:
            with torch.inference_mode():
                model(torch.zeros(1, 3, 32, 32))
            other.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test reports what happened there
            other.append(exc)

    with torch.inference_mode(), stop_when(lambda: True):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(timeout=60)
        with pytest.raises(BatchAbandoned):
            model(torch.zeros(1, 3, 32, 32))
    assert other == [None]
    with torch.inference_mode():
        model(torch.zeros(1, 3, 32, 32))  # and once the block ends, nothing stops
