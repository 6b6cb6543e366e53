"""Route the ``lt_detectron`` loggers into Detectron2's log (stdout on rank 0, ``OUTPUT_DIR/log.txt``).

Detectron2's ``default_setup`` installs handlers on the ``detectron2`` and ``fvcore`` loggers only, so
without this the class-statistics table, the AP-by-group tables and the csv paths logged by
``lt_detectron.*`` modules reach neither stdout nor ``log.txt``. :func:`setup_lt_logger` does for
``lt_detectron`` what ``default_setup`` does for ``detectron2``, with Detectron2's own
:func:`~detectron2.utils.logger.setup_logger` (same format, same files: rank 0 writes ``log.txt`` and
stdout, rank k > 0 writes ``log.txt.rank{k}``). It is idempotent: a second call (``tools/train_net.py``
and ``LTTrainer`` both call it) never adds a second handler writing to the same stream or file.
"""

import logging
import os

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

__all__ = ["setup_lt_logger"]

LOGGER_NAME = "lt_detectron"


def _stream_key(handler):
    """What a handler writes to: the absolute file name for files, else the stream object itself."""
    stream = getattr(handler, "stream", None)
    if stream is None:
        return ("handler", id(handler))
    name = getattr(stream, "name", None)
    if isinstance(name, str) and not name.startswith("<"):  # a real file, not <stdout>
        return ("file", os.path.realpath(name))
    return ("stream", id(stream))


def setup_lt_logger(output=None, distributed_rank=None, *, color=True) -> logging.Logger:
    """Give the ``lt_detectron`` logger Detectron2's handlers; returns that logger.

    Args:
        output: ``cfg.OUTPUT_DIR`` (logs go to ``output/log.txt``), a ``.txt``/``.log`` file name, or
            None for stdout only (as :func:`~detectron2.utils.logger.setup_logger`).
        distributed_rank: this process's rank (default: ``detectron2.utils.comm.get_rank()``); only
            rank 0 logs to stdout, other ranks write ``log.txt.rank{k}``.
        color: colored stdout, as Detectron2.

    Calling it again (with the same or another output) adds only the handlers whose stream or file is
    not already attached.
    """
    rank = comm.get_rank() if distributed_rank is None else int(distributed_rank)
    logger = logging.getLogger(LOGGER_NAME)
    before = list(logger.handlers)
    # detectron2 caches setup_logger by its arguments; call the undecorated function so that a logger
    # whose handlers were removed gets them again, and de-duplicate by destination instead
    raw_setup = getattr(setup_logger, "__wrapped__", setup_logger)
    raw_setup(output, distributed_rank=rank, color=color, name=LOGGER_NAME)
    seen = {_stream_key(h) for h in before}
    for h in logger.handlers[len(before) :]:
        key = _stream_key(h)
        if key in seen:
            logger.removeHandler(h)
        else:
            seen.add(key)
    return logger
