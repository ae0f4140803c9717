"""LARS (You et al. 2017), the optimizer of the MAE linear-probing recipe.

As the MAE reference: weight decay and the trust ratio apply to parameters of 2+ dims only (biases and
norms take plain momentum SGD steps); no Nesterov; ``trust_coefficient`` 0.001.
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """Args: params (or groups with ``weight_decay``), lr, weight_decay, momentum, trust_coefficient."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0, torch.where(u_norm > 0, g["trust_coefficient"] * p_norm / u_norm, one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss
