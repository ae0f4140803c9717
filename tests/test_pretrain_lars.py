"""LARS for the linear probe is timm's ``Lars`` with the MAE reference's rule (trust ratio and weight decay on
2+-dim parameters only); one step updates as the optimizer this project wrote before it did."""

import pytest
import torch
import torch.nn as nn

from mae_transfer.optim import param_groups
from pretrain.engine import build_optimizer


def reference_lars_step(params: dict, grads: dict, bufs: dict, lr: float, weight_decay: float, momentum: float,
                        trust: float = 0.001) -> dict:
    """The step of the hand-written LARS this project used (a copy of its arithmetic): for 2+-dim
    parameters ``d = g + wd * p`` scaled by ``trust * |p| / |d|`` (1 where a norm is 0); then momentum
    ``mu = m * mu + d`` and ``p -= lr * mu``."""
    out = {}
    for name, p in params.items():
        d = grads[name]
        if p.ndim > 1:
            d = d + weight_decay * p
            pn, dn = p.norm(), d.norm()
            q = trust * pn / dn if pn > 0 and dn > 0 else torch.tensor(1.0)
            d = d * q
        bufs[name] = momentum * bufs[name] + d if name in bufs else d.clone()
        out[name] = p - lr * bufs[name]
    return out


def _probe_head():
    torch.manual_seed(0)
    head = nn.Sequential(nn.BatchNorm1d(16, affine=False), nn.Linear(16, 10))
    x, y = torch.randn(32, 16), torch.randint(0, 10, (32,))
    return head, x, y


@pytest.mark.parametrize("mixed_group", [False, True])
def test_two_steps_update_as_the_former_lars(mixed_group):
    head, x, y = _probe_head()
    groups = ([{"params": list(head.parameters()), "weight_decay": 0.0, "lr_scale": 1.0}] if mixed_group
              else param_groups(head, weight_decay=0.0))
    opt = build_optimizer("lars", groups, lr=0.5, betas=(0.9, 0.999), momentum=0.9)
    names = dict(head.named_parameters())
    bufs = {}
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(head(x), y).backward()
        before = {n: p.detach().clone() for n, p in names.items()}
        want = reference_lars_step(before, {n: p.grad.clone() for n, p in names.items()}, bufs, lr=0.5,
                                   weight_decay=0.0, momentum=0.9)
        opt.step()
        for n, p in names.items():
            torch.testing.assert_close(p.detach(), want[n], rtol=1e-5, atol=1e-7)
            assert not torch.equal(p.detach(), before[n]), n


def test_weight_decay_follows_the_lars_paper():
    """With weight decay, the trust ratio is the paper's ``trust * |w| / (|g| + wd * |w|)`` (You et al. 2017,
    eq. 6); the decayed gradient ``g + wd * w`` is scaled by it; 1-dim parameters take a plain SGD step."""
    head, x, y = _probe_head()
    w, b = head[1].weight, head[1].bias
    opt = build_optimizer("lars", [{"params": [w, b], "weight_decay": 0.05}], lr=0.5, betas=(0.9, 0.999),
                          momentum=0.9)
    nn.functional.cross_entropy(head(x), y).backward()
    w0, b0, gw, gb = w.detach().clone(), b.detach().clone(), w.grad.clone(), b.grad.clone()
    opt.step()
    ratio = 0.001 * w0.norm() / (gw.norm() + 0.05 * w0.norm())
    torch.testing.assert_close(w.detach(), w0 - 0.5 * ratio * (gw + 0.05 * w0))
    torch.testing.assert_close(b.detach(), b0 - 0.5 * gb)
