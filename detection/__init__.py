"""Detectron2 adapter: mae_transfer's ViT as ViTDet / multi-level FPN backbones, COCO-format data
registration with up-front validation, lr-decay glue, evaluator and checkpoint helpers.

Thin glue only: the transformer itself is :class:`mae_transfer.models.vit.VisionTransformer`."""
