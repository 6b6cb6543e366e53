from .checkpoint import CheckpointClassMismatch, LTCheckpointer
from .launch import launch_cpu, launch_on_device
from .logger import setup_lt_logger
from .results import format_results
from .solver import build_lt_optimizer
from .decoupled import freeze_all_but_classifier, reset_classifiers
from .trainer import LTTrainer
from .training_data import check_config_against_data, prepare_training_data
