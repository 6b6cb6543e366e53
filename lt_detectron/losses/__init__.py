"""Pure-torch long-tail classification losses (no detectron2 / config dependencies).

Convention everywhere (Detectron2): ROI logits are (R, C+1) with the background as the LAST column
(index C) and gt_classes in [0, C], C = background. Dense (one-stage) losses use C channels with an
all-zero target row for background locations.
"""
from .distributed import all_reduce_sum, get_world_size, is_distributed  # noqa: F401
from .focal import sigmoid_focal_loss  # noqa: F401
from .sigmoid import (  # noqa: F401
    FusedWeightedBCEFunction,
    SigmoidBCELoss,
    fused_weighted_bce,
    sigmoid_bce_loss,
)
from .eqlv2 import EQLv2FocalLoss, EQLv2Loss, eqlv2_map, objectness_scores  # noqa: F401
from .ecm import ECMFocalLoss, ECMLoss, ecm_margins_and_weights  # noqa: F401
from .bofl import (  # noqa: F401
    BOFLFocalLoss,
    BOFLSchedule,
    batch_class_counts,
    bofl_class_weights,
    bofl_dataset_weights,
    bofl_focal_loss,
)

from .bags import BAGSLayout, BAGSLoss, bags_scores, group_softmax  # noqa: F401,E402
from .c2am import C2AMLoss, c2am_loss, c2am_margins  # noqa: F401,E402
from .federated import fed_loss_class_weights, fed_loss_classes, fed_loss_mask  # noqa: F401,E402
