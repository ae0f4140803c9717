"""Shared by the grad_checkpointing tests: one training step with the option off and on, same seed."""

import torch


def step_off_and_on(model: torch.nn.Module, vit, blocks, loss_fn, seed: int = 0):
    """Run ``loss_fn()`` + backward twice under ``seed``, with ``vit.grad_checkpointing`` off then on.

    model: the module whose parameter gradients are compared; vit: the VisionTransformer carrying the
    option; blocks: the blocks expected to run (each must run once without, twice with checkpointing:
    the recomputation in backward, which is what proves the option is in effect).
    Returns ``[(loss, {name: grad}, block_calls)]`` for off and on."""
    calls = [0]

    def count(*_):
        calls[0] += 1

    # pre-hooks: the recomputation stops once it has what backward needs, before forward hooks run
    hooks = [b.register_forward_pre_hook(count) for b in blocks]
    out = []
    try:
        for on in (False, True):
            vit.set_grad_checkpointing(on)
            model.zero_grad(set_to_none=True)
            calls[0] = 0
            torch.manual_seed(seed)
            loss = loss_fn()
            loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            out.append((loss.detach().float(), grads, calls[0]))
    finally:
        for h in hooks:
            h.remove()
        vit.set_grad_checkpointing(False)
    return out


def assert_same_step(model, vit, blocks, loss_fn, atol=1e-6, rtol=1e-5):
    """Loss and every gradient equal with and without checkpointing; the blocks were recomputed."""
    (l0, g0, c0), (l1, g1, c1) = step_off_and_on(model, vit, blocks, loss_fn)
    assert c0 == len(blocks), f"{c0} block calls without checkpointing, expected {len(blocks)}"
    assert c1 == 2 * len(blocks), f"{c1} block calls with checkpointing, expected {2 * len(blocks)} (recomputed)"
    torch.testing.assert_close(l1, l0, atol=atol, rtol=rtol)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")
