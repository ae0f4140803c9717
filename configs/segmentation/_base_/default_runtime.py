# mmengine runtime shared by every segmentation config (mmseg's default_runtime, plus our modules).
default_scope = 'mmseg'
# registers PlainViTBackbone, ViTLayerDecayOptimizerConstructor and CheckSegLabels in mmseg's registries
custom_imports = dict(imports=['segmentation'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
