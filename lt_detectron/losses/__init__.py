"""Long-tail classification losses: pure torch maths, and the loss protocol the heads use.

Convention everywhere (Detectron2): ROI logits are (R, C+1) with the background as the LAST column
(index C) and gt_classes in [0, C], C = background. Dense (one-stage) losses use C channels with an
all-zero target row for background locations.

Every method is a protocol loss (:mod:`lt_detectron.losses.base`), registered by the module that
implements it in ``ROI_LOSS_REGISTRY`` (``MODEL.LT.ROI_LOSS``) and/or ``DENSE_LOSS_REGISTRY``
(``MODEL.LT.DENSE_LOSS``); importing this package registers them all. Heads build them with
:func:`build_roi_loss` / :func:`build_dense_loss`. The functional forms and the plain modules
(tensors in, scalar out) stay usable without any config. Each module's docstring states its contract
(logits layout, shapes, buffers, reduction); the maths of every method and every choice the papers
leave open are in docs/methods.md.
"""

from .base import (  # noqa: F401
    DENSE_LOSS_REGISTRY,
    ROI_LOSS_REGISTRY,
    ClassifierSpec,
    DenseBatch,
    DenseLoss,
    ROIBatch,
    ROILoss,
    train_class_stats,
)
from .build import build_dense_loss, build_roi_loss  # noqa: F401
from .logit_columns import check_logit_columns, describe_logit_column  # noqa: F401
from .distributed import all_reduce_sum, get_world_size, is_distributed  # noqa: F401
from .focal import FocalDenseLoss, penalty_reduced_focal_loss, sigmoid_focal_loss  # noqa: F401
from .softmax import SoftmaxROILoss  # noqa: F401
from .sigmoid import (  # noqa: F401
    FusedWeightedBCEFunction,
    SigmoidROILoss,
    fused_weighted_bce,
    sigmoid_bce_loss,
)
from .eqlv2 import EQLv2FocalLoss, EQLv2Loss, eqlv2_map, objectness_scores  # noqa: F401
from .ecm import ECMDenseLoss, ECMFocalLoss, ECMLoss, ecm_margins_and_weights  # noqa: F401
from .bofl import (  # noqa: F401
    BOFLDenseLoss,
    BOFLSchedule,
    BOFLWeighting,
    batch_class_counts,
    bofl_class_weights,
    bofl_dataset_weights,
    bofl_focal_loss,
)

from .bags import BAGSLayout, BAGSLoss, bags_scores, group_softmax  # noqa: F401,E402
from .c2am import C2AMROILoss, c2am_loss, c2am_margins  # noqa: F401,E402
from .federated import fed_loss_class_weights, fed_loss_classes, fed_loss_mask  # noqa: F401,E402
from .seesaw import SeesawLoss, seesaw_cross_entropy, seesaw_logit_offsets  # noqa: F401,E402
from .efl import EqualizedFocalLoss, efl_factors  # noqa: F401,E402
from .eqlv1 import EQLv1Loss, eqlv1_tail_classes  # noqa: F401,E402
