"""Mixed precision for the mmengine Runner on any device, CPUs included, with ``dtype='auto'`` decided
by a measured probe.

mmengine's ``AmpOptimWrapper`` asserts a CUDA / NPU / MLU device. On CPUs with bf16 matrix
instructions, bf16 autocast pays off for the segmentation model too (``benchmarks/demo_precision.py``
measures it), so this wrapper autocasts the forward pass on the model's own device type. bf16 has
fp32's range: no loss scaling is needed, and the optimizer updates the fp32 weights as usual; float16
scales the loss with a ``torch.amp.GradScaler`` as ``AmpOptimWrapper`` does.

    optim_wrapper = dict(type='AutocastOptimWrapper', dtype='bfloat16', optimizer=dict(...))
    optim_wrapper = dict(type='AutocastOptimWrapper', dtype='auto', optimizer=dict(...))  # probed

``dtype='auto'`` leaves the choice to :class:`segmentation.precision.PrecisionProbeHook` (registered
by ``segmentation.run`` whenever the config asks for it), which times one training forward + backward
in fp32 and bf16 before the first iteration and calls :meth:`AutocastOptimWrapper.set_precision`.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS

__all__ = ["AutocastOptimWrapper", "wrapper_precision"]

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` runs the forward pass under ``torch.autocast``.

    Args:
        dtype: ``'bfloat16'`` (default), ``'float16'`` (with a grad scaler) or ``'auto'`` (set by
            :class:`segmentation.precision.PrecisionProbeHook` before training; ``'float32'`` may come
            out of it, and then the wrapper is a plain ``OptimWrapper``).
        **kwargs: ``OptimWrapper``'s (``optimizer``, ``accumulative_counts``, ``clip_grad``).
    """

    def __init__(self, dtype: str = "bfloat16", **kwargs):
        super().__init__(**kwargs)
        if dtype not in ("bfloat16", "float16", "auto"):
            raise ValueError(f"AutocastOptimWrapper: dtype must be 'bfloat16', 'float16' or 'auto', got {dtype!r}")
        self.loss_scaler = None
        self.precision = "auto"
        self.probe_times: dict[str, float] = {}
        if dtype != "auto":
            self.set_precision(_DTYPES[dtype])

    def set_precision(self, precision: str):
        """Use ``precision`` (``fp32``, ``bf16`` or ``fp16``) from now on."""
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"AutocastOptimWrapper: precision must be fp32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        self.cast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if precision == "fp16" and self.loss_scaler is None:
            self.loss_scaler = torch.amp.GradScaler("cuda" if torch.cuda.is_available() else "cpu")

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        if self.precision == "auto":
            raise RuntimeError("AutocastOptimWrapper(dtype='auto') was not given a precision: the run needs "
                               "segmentation.precision.PrecisionProbeHook (segmentation.run registers it)")
        device = next(model.parameters()).device.type
        cast = torch.autocast(device, dtype=self.cast_dtype) if self.cast_dtype else contextlib.nullcontext()
        with super().optim_context(model), cast:
            yield

    def backward(self, loss: torch.Tensor, **kwargs):
        if self.loss_scaler is None or self.precision != "fp16":
            return super().backward(loss, **kwargs)
        self.loss_scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs):
        if self.loss_scaler is None or self.precision != "fp16":
            return super().step(**kwargs)
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update()

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.loss_scaler is not None and self.precision == "fp16":
            state["loss_scaler"] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict):
        state_dict = dict(state_dict)  # the caller's dict stays whole
        scaler = state_dict.pop("loss_scaler", None)
        if scaler is not None and self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(scaler)
        super().load_state_dict(state_dict)


def wrapper_precision(wrapper) -> str:
    """The training precision an mmengine optim wrapper runs: ``fp32``, ``bf16`` or ``fp16``."""
    if isinstance(wrapper, AutocastOptimWrapper):
        return wrapper.precision
    dtype = getattr(wrapper, "cast_dtype", None)  # mmengine's AmpOptimWrapper
    if type(wrapper).__name__ == "AmpOptimWrapper":
        return "bf16" if dtype == torch.bfloat16 else "fp16"
    return "fp32"
