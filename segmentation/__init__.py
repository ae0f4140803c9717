"""MMSegmentation adapter: thin glue around mae_transfer's ViT.

Importing this package registers, in mmseg's registries:
- ``MAEViT`` (MODELS): the backbone, returning 4 block outputs as feature maps;
- ``ViTLayerDecayOptimizerConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS): layer-wise lr decay;
- ``PerClassIoUMetric`` (METRICS): IoUMetric keeping the per-class IoU for metrics.json;
- ``CheckSegLabels`` (TRANSFORMS): per-sample label checks (see ``data.py`` for up-front checks);
and registers the mmseg/mmpretrain ViT key layout (``layers.i.ln1``, ``ffn.layers.0.0``, ``gamma_1``,
``q_bias``/``v_bias``) with :func:`mae_transfer.checkpoint.register_key_converter`.
The pyramid neck is mmseg's own ``Feature2Pyramid``.
"""

from .backbone import MAEViT
from .data import CheckSegLabels, SegDataError, SplitReport, label_problems, validate_seg_folder
from .layer_decay import ViTLayerDecayOptimizerConstructor
from .metrics import PerClassIoUMetric
from .mmseg_keys import mmseg_vit_to_ours

__all__ = ["MAEViT", "ViTLayerDecayOptimizerConstructor", "CheckSegLabels", "SplitReport", "label_problems",
           "SegDataError", "validate_seg_folder", "mmseg_vit_to_ours", "PerClassIoUMetric"]
