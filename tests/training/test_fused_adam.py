"""Fused Adam (:mod:`medgen.training.optim`) trains the same as the default Adam step."""

import pytest
import torch

from medgen.training.optim import adam, fused_supported

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(fused: bool, steps: int = 20) -> tuple[list[float], torch.nn.Module]:
    torch.manual_seed(0)
    # (no bias before the norm: its gradient is pure rounding noise, which Adam amplifies)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1, bias=False),
                              torch.nn.InstanceNorm2d(8, affine=True),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))
    opt = adam(net.parameters(), lr=2e-3, betas=(0.5, 0.999)) if fused else \
        torch.optim.Adam(net.parameters(), lr=2e-3, betas=(0.5, 0.999))
    x, y = torch.randn(4, 2, 16, 16), torch.randn(4, 2, 16, 16)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.l1_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses, net


def test_fused_adam_gives_the_same_losses_and_weights():
    fused_losses, fused_net = _train(True)
    plain_losses, plain_net = _train(False)
    assert fused_losses[-1] < fused_losses[0]
    torch.testing.assert_close(torch.tensor(fused_losses), torch.tensor(plain_losses), rtol=1e-4, atol=1e-5)
    for a, b in zip(fused_net.parameters(), plain_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_is_used_where_supported_and_state_loads_across():
    net = torch.nn.Linear(3, 2)
    opt = adam(net.parameters(), lr=1e-3)
    assert fused_supported(list(net.parameters())) and opt.defaults["fused"]
    plain = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3)).sum().backward()
    plain.step()
    opt.load_state_dict(plain.state_dict())  # a checkpoint of the default optimiser resumes
    opt.step()
    assert not fused_supported([torch.zeros(2, dtype=torch.int64)])
    assert not fused_supported([])
