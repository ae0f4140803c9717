"""The training precision of a segmentation run: ``--precision`` rewrites the config's optim wrapper,
and ``auto`` is decided by :class:`PrecisionProbeHook`, one timed forward + backward of the real model
on the first training batch in fp32 and bf16 (fp16 on GPUs without bf16) before the first iteration,
cached per machine and model shape (:mod:`mae_transfer.precision`). Evaluation runs in fp32 whatever
the training precision: mmengine's val loop does not enter the optim wrapper's autocast."""

from __future__ import annotations

from mmengine.hooks import Hook

from mae_transfer.common import ConfigError

__all__ = ["PRECISIONS", "apply_precision", "PrecisionProbeHook"]

PRECISIONS = ("config", "auto", "fp32", "bf16", "fp16")


def apply_precision(cfg, precision: str):
    """Rewrite ``cfg.optim_wrapper`` for ``precision``: ``config`` keeps the config's; ``fp32`` is
    mmengine's ``OptimWrapper``; ``bf16`` and ``auto`` are :class:`AutocastOptimWrapper`; ``fp16`` is
    mmengine's ``AmpOptimWrapper`` with dynamic loss scaling on CUDA and ``AutocastOptimWrapper``'s
    grad scaler on CPU. The optimizer, its constructor and ``paramwise_cfg`` stay as they are."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    ow = cfg.optim_wrapper
    if ow.get("type") == "AutocastOptimWrapper" and ow.get("dtype", "bfloat16") not in ("bfloat16", "float16", "auto"):
        raise ConfigError(f"optim_wrapper.dtype of AutocastOptimWrapper must be 'bfloat16', 'float16' or 'auto', "
                          f"got {ow.get('dtype')!r}")
    if precision == "config":
        return
    for key in ("dtype", "loss_scale"):
        ow.pop(key, None)
    if precision == "fp32":
        ow.type = "OptimWrapper"
    elif precision == "fp16" and torch.cuda.is_available():
        ow.update(type="AmpOptimWrapper", dtype="float16", loss_scale="dynamic")
    else:
        ow.update(type="AutocastOptimWrapper", dtype={"bf16": "bfloat16", "fp16": "float16", "auto": "auto"}[precision])


def wants_probe(cfg) -> bool:
    """Whether the config's optim wrapper leaves its precision to the probe (``dtype='auto'``)."""
    return cfg.optim_wrapper.get("type") == "AutocastOptimWrapper" and cfg.optim_wrapper.get("dtype") == "auto"


class PrecisionProbeHook(Hook):
    """Before training, time one forward + backward (loss in fp32) of the runner's model on the first
    training batch size in each candidate precision, and set the :class:`AutocastOptimWrapper`'s precision
    to the fastest (a reduced precision must win by 5 %). Rank 0 probes and broadcasts its choice.

    The batch (the training set's first samples at the training batch size, through its pipeline) is
    built from the dataset directly, leaving the train loop's iterator, sampler and workers alone, and
    every RNG state is put back afterwards, so
    the training that follows is the same whether the choice was probed or read from the cache.
    """

    priority = "VERY_HIGH"

    def __init__(self):
        self.choice, self.times = None, {}

    def _first_batch(self, runner):
        """The dataset's first ``batch_size`` samples through its pipeline and the loader's collate
        function. The train loop's sampler is not touched: mmengine's ``InfiniteSampler`` shares one
        index generator between all its iterators, and closing a second one would end the training's."""
        loader = runner.train_dataloader
        n = loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)
        return loader.collate_fn([loader.dataset[i] for i in range(min(n, len(loader.dataset)))])

    def before_train(self, runner):
        from mmengine.dist import broadcast_object_list, get_world_size, is_main_process

        from mae_transfer.precision import cache_path, cached_choice, kept_rng, probe_precision

        from .autocast import AutocastOptimWrapper

        wrapper = runner.optim_wrapper
        if not isinstance(wrapper, AutocastOptimWrapper) or wrapper.precision != "auto":
            return
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        choice = [None]
        if is_main_process():
            device = next(model.parameters()).device
            was_training = model.training
            with kept_rng():
                data = self._first_batch(runner)
                model.train()
                n_params = sum(p.numel() for p in model.parameters())
                shape = list(model.data_preprocessor(data, True)["inputs"].shape)
                key = f"mmseg|{type(model).__name__}|{n_params}|inputs {shape}"

                def step():
                    batch = model.data_preprocessor(data, True)
                    loss, _ = model.parse_losses(model(**batch, mode="loss"))
                    return loss.float()

                cached = cached_choice(device, key)
                choice[0], self.times = probe_precision(model, step, device, key)
            model.train(was_training)
            runner.logger.info(
                f"precision auto: {choice[0]} ({'cached in ' + str(cache_path()) + ', ' if cached else ''}one "
                f"forward + backward on a training batch: "
                + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in self.times.items()) + ")")
        if get_world_size() > 1:
            broadcast_object_list(choice, src=0)
        self.choice = choice[0]
        wrapper.set_precision(self.choice)
        wrapper.probe_times = self.times
