"""DiffusionNFT's EMAs: the old policy's and the evaluation copy's decay schedules, and the in-place update."""

from __future__ import annotations

import pytest
import torch

from negguide.nft import ema_update_, eval_ema_decay, old_policy_decay


def test_decay_schedules():
    assert [old_policy_decay(s) for s in (0, 100, 499, 500, 10_000)] == pytest.approx([0, 0.1, 0.499, 0.5, 0.5])
    assert old_policy_decay(50, rate=0.0075, max_decay=0.999, flat=75) == 0.0
    assert [eval_ema_decay(s) for s in (0, 1, 80, 10_000)] == pytest.approx([0.1, 2 / 11, 0.9, 0.9])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="step"):
            old_policy_decay(bad)


def test_ema_update_lists_and_dicts():
    target = [torch.zeros(2), torch.ones(3)]
    ema_update_(target, [torch.full((2,), 10.0), torch.full((3,), 3.0)], decay=0.25)
    assert target[0].tolist() == [7.5, 7.5] and target[1].tolist() == [2.5, 2.5, 2.5]
    weight = torch.nn.Parameter(torch.randn(4))
    old = {"w": weight.detach().clone() + 1}
    ema_update_(old, {"w": weight}, decay=0.0)  # d = 0: exact copy, no autograd history
    assert torch.equal(old["w"], weight.detach()) and not old["w"].requires_grad
    before = old["w"].clone()
    ema_update_(old, {"w": torch.zeros(4)}, decay=1.0)
    assert torch.equal(old["w"], before)
    ema_update_([weight], [torch.zeros(4)], decay=0.5)  # a leaf parameter can be the target (under no_grad)
    torch.testing.assert_close(weight.detach(), before / 2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(target=[torch.zeros(2)], source=[torch.zeros(2)], decay=1.5), ValueError, "decay must be a number in"),
        (dict(target=[torch.zeros(2)], source=[torch.zeros(3)], decay=0.5), ValueError, r"target shape \(2,\)"),
        (dict(target={"a": torch.zeros(2)}, source={"b": torch.zeros(2)}, decay=0.5), ValueError, "different keys"),
        (dict(target=[torch.zeros(2)], source=[], decay=0.5), ValueError, "1 tensors but source has 0"),
        (dict(target={"a": torch.zeros(2)}, source=[torch.zeros(2)], decay=0.5), TypeError, "both be dicts"),
    ],
)
def test_ema_update_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        ema_update_(**kwargs)
