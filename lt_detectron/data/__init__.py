from .datasets import (
    DatasetFormatError,
    ensure_dataset_metadata,
    is_lvis_format,
    load_lt_json,
    read_json_categories,
    register_lt_dataset,
)
from .loading import load_dataset_dicts, load_train_dicts, train_dataset_dicts
from .prepare import (
    check_class_lists,
    check_dataset_files,
    check_same_class_lists,
    ensure_embedded_generated,
    prepare_datasets,
)
from .register_args import add_register_arguments, register_from_args
from .validation import BadBoxError, ImageReadError, LTDatasetMapper
from .builtin import register_all as _register_all

_register_all()
