from .checkpoint import CheckpointClassMismatch, LTCheckpointer
from .launch import launch_cpu, launch_on_device
from .logger import setup_lt_logger
from .results import format_results
from .solver import build_lt_optimizer
from .trainer import (
    LTTrainer,
    check_config_against_data,
    freeze_all_but_classifier,
    prepare_training_data,
)
