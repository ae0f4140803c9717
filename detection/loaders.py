"""The data loader the detection configs share: ViTDet's large-scale jitter (LSJ)."""

from __future__ import annotations

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from omegaconf import DictConfig

from .evaluation import coco_evaluator

__all__ = ["lsj_dataloader"]


def lsj_dataloader(image_size: int = 1024, total_batch_size: int = 64, min_scale: float = 0.1,
                   max_scale: float = 2.0, train_names: str = "coco_2017_train", test_names: str = "coco_2017_val",
                   num_workers: int = 4, mask_format: str = "polygon") -> DictConfig:
    """ViTDet's large-scale-jitter loader (detectron2 projects/ViTDet common/coco_loader_lsj.py): flip,
    resize by a random scale of ``image_size`` (``min_scale``-``max_scale``), fixed ``image_size`` crop,
    boxes recomputed from masks after cropping; test: longer side resized to ``image_size``; RGB."""
    dataloader = model_zoo.get_config("common/data/coco.py").dataloader
    dataloader.train.dataset.names = train_names
    dataloader.train.mapper.augmentations = [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(min_scale=min_scale, max_scale=max_scale, target_height=image_size,
                         target_width=image_size),
        L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
    ]
    dataloader.train.mapper.image_format = "RGB"
    dataloader.train.mapper.recompute_boxes = True
    dataloader.train.mapper.instance_mask_format = mask_format
    dataloader.train.total_batch_size = total_batch_size
    dataloader.train.num_workers = num_workers
    dataloader.test.dataset.names = test_names
    dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
    dataloader.test.num_workers = num_workers
    dataloader.evaluator = L(coco_evaluator)(dataset_name="${..test.dataset.names}")
    return dataloader
