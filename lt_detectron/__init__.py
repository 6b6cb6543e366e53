from .config import add_lt_config  # noqa
