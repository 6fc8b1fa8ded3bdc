"""The positive-only baseline's loss (only samples above their prompt's mean reward) and the native regression
targets of each parameterisation (flow, epsilon, v), from which x0 is recovered exactly."""

from __future__ import annotations

import pytest
import torch

from negguide.nft.loss import native_target, positive_only_loss, x0_from_flow, x0_from_prediction


def test_positive_only_loss_depends_only_on_kept_samples():
    fit = torch.tensor([0.3, 0.7, 1.1, 0.2], requires_grad=True)
    r = torch.tensor([0.9, 0.5, 0.2, 0.6])  # kept: 0 and 3 (r > 0.5); r = 0.5 (tied with the mean) is dropped
    loss, stats = positive_only_loss(fit, r, kl=None, kl_weight=0.0)
    loss.backward()
    torch.testing.assert_close(fit.grad, torch.tensor([0.25, 0.0, 0.0, 0.25]))  # mean over the whole batch
    torch.testing.assert_close(loss, torch.tensor((0.3 + 0.2) / 4))
    assert float(stats["kept"]) == 0.5
    kl = torch.tensor([1.0, 3.0, 0.0, 0.0])
    torch.testing.assert_close(positive_only_loss(fit, torch.zeros(4), kl=kl, kl_weight=0.1)[0], torch.tensor(0.1))


def test_native_targets_are_what_each_parameterisation_regresses():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    sigma, ab = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.9, 0.5, 0.05])
    x_flow = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
    x_ddpm = ab.sqrt().view(-1, 1, 1, 1) * x0 + (1 - ab).sqrt().view(-1, 1, 1, 1) * eps
    # a perfect prediction of the target gives back x0 exactly
    torch.testing.assert_close(x0_from_flow(native_target(x0, eps, sigma, "flow"), x_flow, sigma), x0)
    for kind in ("epsilon", "v_prediction"):
        target = native_target(x0, eps, ab, kind)
        torch.testing.assert_close(x0_from_prediction(target, x_ddpm, ab, kind), x0, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="sample"):
        native_target(x0, eps, ab, "sample")
