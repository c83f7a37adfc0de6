"""Models: backbones by name (registry), the shared head with the sex branch, weights.

Import from here (``from h2a.models import create_model``); the submodules are the
implementation.
"""

from h2a.models.zoo import (  # noqa: F401
    TASKS,
    backbone_units,
    freeze_first,
    set_bn_momentum,
    Backbone,
    Conv2dSame,
    H2AModel,
    InceptionV3Trunk,
    ModelInfo,
    PretrainedWeightsUnavailable,
    create_model,
    fold_batchnorm,
    list_models,
    model_info,
    pretrained_weights_path,
    register_model,
    set_drop_path,
)
