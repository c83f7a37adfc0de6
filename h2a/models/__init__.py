"""Models: backbones by name (H2A's own and any timm name), the shared head with the sex
branch, pretrained weights (local files, the bundled Lite0 remap), fine-tuning knobs.

Import from here (``from h2a.models import create_model``); the submodules are the
implementation:

* ``registry``        names -> builders, ``create_model``, ``model_info``, ``list_models``
* ``heads``           ``H2AModel`` (pooling + sex branch + dense head), ``Backbone``
* ``timm_backbones``  any timm architecture as a trunk; ``efficientnet_lite0`` on timm
* ``inception``       the width-scalable Inception-v3 of the seeds' ablation
* ``tiny``            ``tiny_cnn``, the fast test/demo model
* ``weights``         weight files, the hub attempt, the lukemelas -> timm Lite0 remap
* ``tuning``          freeze, BatchNorm momentum, stochastic depth
* ``fold``            BatchNorm folding for inference
"""

# builders register themselves on import (H2A's own names; timm names need no registration)
from h2a.models import inception as _inception  # noqa: F401
from h2a.models import timm_backbones as _timm_backbones  # noqa: F401
from h2a.models import tiny as _tiny  # noqa: F401
from h2a.models.fold import fold_batchnorm
from h2a.models.heads import Backbone, H2AModel
from h2a.models.inception import InceptionV3Trunk
from h2a.models.registry import (
    TASKS,
    TIMM_CURATED,
    ModelInfo,
    create_model,
    list_models,
    list_timm_models,
    model_info,
    register_model,
)
from h2a.models.tuning import (
    backbone_units,
    freeze_first,
    set_bn_momentum,
    set_drop_path,
)
from h2a.models.weights import PretrainedWeightsUnavailable, pretrained_weights_path

__all__ = [
    "TASKS",
    "TIMM_CURATED",
    "Backbone",
    "H2AModel",
    "InceptionV3Trunk",
    "ModelInfo",
    "PretrainedWeightsUnavailable",
    "backbone_units",
    "create_model",
    "fold_batchnorm",
    "freeze_first",
    "list_models",
    "list_timm_models",
    "model_info",
    "pretrained_weights_path",
    "register_model",
    "set_bn_momentum",
    "set_drop_path",
]
