"""setup_lt_logger: the lt_detectron loggers write into Detectron2's log (stdout on rank 0, log.txt),
once, however often it is called."""

import logging

import pytest

from lt_detectron.engine.logger import setup_lt_logger


def _ours(logger):
    """The logger's handlers less pytest's capture handlers (pytest attaches them to non-propagating
    loggers while a test runs, so their number depends on what ran before)."""
    return [h for h in logger.handlers if type(h).__module__.split(".")[0] != "_pytest"]


@pytest.fixture
def lt_logger():
    """Restore the lt_detectron logger (handlers, level, propagate) after the test."""
    logger = logging.getLogger("lt_detectron")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = []
    yield logger
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_messages_reach_stdout_and_log_txt_once(tmp_path, capsys, lt_logger):
    out = tmp_path / "out"
    setup_lt_logger(str(out), distributed_rank=0, color=False)
    setup_lt_logger(
        str(out), distributed_rank=0, color=False
    )  # LTTrainer calls it again after train_net
    setup_lt_logger(str(out) + "/", distributed_rank=0, color=False)  # same file, other spelling
    assert len(_ours(lt_logger)) == 2  # one stdout, one log.txt
    # any lt_detectron.* module logger (getLogger(__name__)) propagates to it
    logging.getLogger("lt_detectron.class_stats").info(
        "class statistics built in 0.001s:\nTABLE-ROW"
    )
    logging.getLogger("lt_detectron.evaluation.lvis_evaluation").info(
        "Per-category bbox AP written to X.csv"
    )
    logging.getLogger("lt_detectron.engine.trainer").debug("debug line")
    for h in _ours(lt_logger):
        h.flush()
    text = (out / "log.txt").read_text()
    assert text.count("TABLE-ROW") == 1 and text.count("Per-category bbox AP written to X.csv") == 1
    assert (
        "lt_detectron.class_stats INFO: class statistics built" in text
    )  # detectron2's file format
    printed = capsys.readouterr().out
    assert printed.count("TABLE-ROW") == 1 and printed.count("X.csv") == 1


def test_later_output_dir_adds_only_the_file(tmp_path, capsys, lt_logger):
    setup_lt_logger(None, distributed_rank=0, color=False)  # a library user: stdout only
    setup_lt_logger(str(tmp_path), distributed_rank=0, color=False)
    assert len(_ours(lt_logger)) == 2
    logging.getLogger("lt_detectron.x").warning("once")
    for h in _ours(lt_logger):
        h.flush()
    assert (tmp_path / "log.txt").read_text().count("once") == 1
    assert capsys.readouterr().out.count("once") == 1


def test_other_ranks_write_their_own_file_and_no_stdout(tmp_path, capsys, lt_logger):
    setup_lt_logger(str(tmp_path), distributed_rank=1, color=False)
    logging.getLogger("lt_detectron.y").info("from rank one")
    for h in _ours(lt_logger):
        h.flush()
    assert "from rank one" in (tmp_path / "log.txt.rank1").read_text()
    assert not (tmp_path / "log.txt").exists()
    assert "from rank one" not in capsys.readouterr().out


def test_handlers_come_back_after_removal(tmp_path, lt_logger):
    """Not defeated by detectron2's lru_cache on setup_logger: a cleared logger is set up again."""
    setup_lt_logger(str(tmp_path), distributed_rank=0, color=False)
    lt_logger.handlers = []
    setup_lt_logger(str(tmp_path), distributed_rank=0, color=False)
    assert len(_ours(lt_logger)) == 2
