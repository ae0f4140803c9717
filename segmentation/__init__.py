"""MMSegmentation adapter: thin glue around mae_transfer's ViT.

Importing this package registers, in mmseg's registries:
- ``PlainViTBackbone`` (MODELS; also under its former name ``MAEViT``, for saved configs): the backbone,
  returning 4 block outputs as feature maps;
- ``ViTLayerDecayOptimizerConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS): layer-wise lr decay;
- ``AutocastOptimWrapper`` (OPTIM_WRAPPERS): bf16 autocast on any device (mmengine's AMP wrapper is GPU-only);
- ``PerClassIoUMetric`` (METRICS): IoUMetric keeping the per-class IoU for metrics.json;
- ``CheckSegLabels`` (TRANSFORMS): per-sample label checks (see ``data.py`` for up-front checks).
The mmseg / mmpretrain ViT key layout (``layers.i.ln1``, ...) is read by the core loader itself
(:mod:`mae_transfer.checkpoint_keys`).
The pyramid neck is mmseg's own ``Feature2Pyramid``.
Importing it also routes every checkpoint mmengine reads through the project's ``weights_only`` loader
(:mod:`segmentation.checkpoint`).
"""

from .autocast import AutocastOptimWrapper
from .backbone import PlainViTBackbone
from .checkpoint import install_safe_loading
from .data import CheckSegLabels, SegDataError, SplitReport, label_problems, validate_seg_folder
from .layer_decay import ViTLayerDecayOptimizerConstructor
from .metrics import PerClassIoUMetric

__all__ = ["AutocastOptimWrapper", "PlainViTBackbone", "ViTLayerDecayOptimizerConstructor", "CheckSegLabels", "SplitReport", "label_problems",
           "SegDataError", "validate_seg_folder", "PerClassIoUMetric"]

install_safe_loading()
