from .datasets import DatasetFormatError, load_lt_json, register_lt_dataset
from .prepare import prepare_datasets
from .builtin import register_all as _register_all

_register_all()
