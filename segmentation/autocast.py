"""Mixed precision for the mmengine Runner on any device, CPUs included.

mmengine's ``AmpOptimWrapper`` asserts a CUDA / NPU / MLU device. On CPUs with bf16 matrix
instructions, bf16 autocast pays off for the segmentation model too (``benchmarks/demo_precision.py``
measures it), so this wrapper autocasts the forward pass on the model's own device type. bf16 has
fp32's range: no loss scaling is needed, and the optimizer updates the fp32 weights as usual.

    optim_wrapper = dict(type='AutocastOptimWrapper', dtype='bfloat16', optimizer=dict(...))
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS

__all__ = ["AutocastOptimWrapper"]


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` runs the forward pass under ``torch.autocast``.

    Args:
        dtype: ``'bfloat16'`` (default) or ``'float16'`` (float16 needs loss scaling: on CUDA use
            mmengine's ``AmpOptimWrapper`` for it).
        **kwargs: ``OptimWrapper``'s (``optimizer``, ``accumulative_counts``, ``clip_grad``).
    """

    def __init__(self, dtype: str = "bfloat16", **kwargs):
        super().__init__(**kwargs)
        if dtype not in ("bfloat16", "float16"):
            raise ValueError(f"AutocastOptimWrapper: dtype must be 'bfloat16' or 'float16', got {dtype!r}")
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        device = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device, dtype=self.cast_dtype):
            yield
