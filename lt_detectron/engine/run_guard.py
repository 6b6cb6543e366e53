"""Run safety of an ``OUTPUT_DIR`` (``tools/train_net.py``): one training run at a time, and no
resume from (or overwrite of) checkpoints trained with another config.

- :class:`OutputDirLock`: an ``flock`` on ``OUTPUT_DIR/.lt_detectron.lock``, taken before
  ``default_setup`` writes ``config.yaml``. Training holds it exclusively, ``--eval-only`` shared
  (evaluations may run together, never beside a training run: both would write ``config.yaml`` and
  ``inference/``). The operating system releases it when the holder exits or dies, so a killed run
  leaves no stale lock; the file only describes the holders (pid, host, purpose, command) for the
  error of a run that finds it taken (:class:`OutputDirBusy`).
- :func:`check_output_dir_config`: the checkpoint that ``--resume`` would continue (``last_checkpoint``)
  records its run's config (``checkpoint["config"]``, see ``LTCheckpointer``); it is compared with
  this run's. Keys in :data:`RESUME_MAY_DIFFER` may differ (extend ``SOLVER.MAX_ITER``, move
  ``OUTPUT_DIR``, other test settings...); any other difference is :class:`ResumeConfigMismatch`
  naming the checkpoint and the keys, unless forced (``--allow-config-change``). A training run
  without ``--resume`` into an ``OUTPUT_DIR`` whose checkpoints were trained with another config is
  refused the same way (it would overwrite them). A checkpoint without a recorded config (written
  before it was recorded) is resumed with a warning.
"""

import contextlib
import logging
import os
import socket
import sys
import time
from typing import List, Optional, Tuple

import yaml

from ..utils.atomic import pid_alive
from .safe_load import CheckpointError, CorruptCheckpointError, load_checkpoint_file

try:
    import fcntl
except ImportError:  # not POSIX: no lock (detectron2 itself targets Linux / macOS)
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "RESUME_MAY_DIFFER",
    "OutputDirBusy",
    "OutputDirLock",
    "ResumeConfigMismatch",
    "check_output_dir_config",
    "config_differences",
    "guard_output_dir",
    "recorded_config",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lt_detectron.lock"

# keys that may differ between a checkpoint's config and the run that resumes from it ("X." = all of X)
RESUME_MAY_DIFFER = (
    "OUTPUT_DIR",
    "SOLVER.MAX_ITER",  # extend a run
    "SOLVER.CHECKPOINT_PERIOD",
    "DATALOADER.NUM_WORKERS",
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",  # not read on resume: the checkpoint is
    # where the run's class statistics are recorded (the trainer fills it; a moved run points elsewhere)
    "MODEL.LT.CLASS_STATS_FILE",
    "DATASETS.TEST",
    "DATASETS.PROPOSAL_FILES_TEST",
    "TEST.",
    "VIS_PERIOD",
    "CUDNN_BENCHMARK",
)
# keys the trainer fills from the data when the config leaves them at this value (compared otherwise)
_FILLED_BY_TRAINER = {"MODEL.LT.BOFL.ITERS_PER_EPOCH": 0}
_ABSENT = "<absent>"


class OutputDirBusy(RuntimeError):
    """Another process holds the ``OUTPUT_DIR`` (a training run, or an evaluation beside a training)."""


class ResumeConfigMismatch(CheckpointError):
    """The checkpoint of ``OUTPUT_DIR`` was trained with another config than this run's."""


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------


def _holder_line(purpose: str) -> str:
    return "pid %d on host %s: %s, since %s UTC: %s\n" % (
        os.getpid(),
        socket.gethostname(),
        purpose,
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        " ".join(sys.argv),
    )


def _live_holders(path: str) -> List[str]:
    """The holder lines of the lock file whose process may still run (another host's: unknown)."""
    try:
        with open(path) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return []
    live = []
    for ln in lines:
        parts = ln.split(" ", 4)  # "pid", N, "on", "host", "HOST:..."
        try:
            pid, host = int(parts[1]), parts[4].split(":", 1)[0]
        except (IndexError, ValueError):
            live.append(ln)
            continue
        if host != socket.gethostname() or pid_alive(pid):
            live.append(ln)
    return live


class OutputDirLock:
    """``flock`` of ``OUTPUT_DIR/.lt_detectron.lock``: ``exclusive`` (training) or shared
    (``--eval-only``), non-blocking; :class:`OutputDirBusy` names the holders. Released by
    :meth:`release`, at the end of a ``with`` block, or by the OS when the process ends."""

    def __init__(self, output_dir: str, *, exclusive: bool = True, purpose: str = "training"):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.exclusive = exclusive
        self.purpose = purpose
        self._fd = None

    def acquire(self) -> "OutputDirLock":
        if fcntl is None:
            logger.warning("no fcntl on this platform: %s is not locked", self.output_dir)
            return self
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holders = _live_holders(self.path) or ["a process that did not describe itself"]
            raise OutputDirBusy(
                "OUTPUT_DIR %s is in use by\n  %s\n(lock file %s). %s cannot run there at the same "
                "time: it would overwrite that run's config.yaml, checkpoints or results. Wait for it "
                "to end, or set another OUTPUT_DIR (e.g. on the command line: OUTPUT_DIR %s_2)."
                % (
                    os.path.abspath(self.output_dir),
                    "\n  ".join(holders),
                    self.path,
                    self.purpose[:1].upper() + self.purpose[1:],
                    self.output_dir.rstrip("/"),
                )
            ) from None
        line = _holder_line(self.purpose).encode()
        if self.exclusive:  # the only holder: the file describes it alone
            os.ftruncate(fd, 0)
            os.pwrite(fd, line, 0)
        else:  # shared holders add their line; dead ones are skipped when reporting
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, line)
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------------------------------------
# The recorded config
# ---------------------------------------------------------------------------------------------


def recorded_config(output_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """``(checkpoint file, its recorded config dump)`` of the checkpoint ``--resume`` would load
    (``last_checkpoint``, or the newest intact ``model_*.pth`` when that one is unreadable);
    ``(None, None)`` without a checkpoint, ``(file, None)`` when it records no config."""
    import torch

    from .checkpoint import LTCheckpointer

    ckpt = LTCheckpointer(torch.nn.Module(), output_dir)
    if not output_dir or not ckpt.has_checkpoint():
        return None, None
    named = ckpt.get_checkpoint_file()
    for path in [named] + ckpt._fallback_candidates([named]):
        try:
            data = load_checkpoint_file(path)
        except (CorruptCheckpointError, FileNotFoundError):
            continue  # resume_or_load falls back the same way (and names it)
        dump = data.get("config") if isinstance(data, dict) else None
        return path, dump if isinstance(dump, str) else None
    return None, None


def _flatten(d, prefix="") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + str(k) + "."))
        else:
            out[prefix + str(k)] = v
    return out


def _may_differ(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUME_MAY_DIFFER)


def config_differences(recorded: str, cfg) -> List[Tuple[str, object, object]]:
    """``(key, value in the checkpoint, value in cfg)`` of every key outside
    :data:`RESUME_MAY_DIFFER` whose value differs (``<absent>`` where one config lacks the key)."""
    old = _flatten(yaml.safe_load(recorded))
    new = _flatten(yaml.safe_load(cfg.dump()))
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a == b or _may_differ(key) or _FILLED_BY_TRAINER.get(key, _ABSENT) == b:
            continue
        diffs.append((key, a, b))
    return diffs


def check_output_dir_config(cfg, *, resume: bool, allow_change: bool = False, world_size: int = 1):
    """Compare the config recorded in ``cfg.OUTPUT_DIR``'s checkpoint with ``cfg`` (scaled to
    ``world_size`` as the trainer will) before a training run starts there; see the module docstring."""
    from detectron2.engine import DefaultTrainer

    path, dump = recorded_config(cfg.OUTPUT_DIR)
    if path is None:
        return
    if dump is None:
        logger.warning(
            "%s records no config (written before lt_detectron recorded it): it cannot be checked "
            "against this run's config%s",
            path,
            "; resuming from it" if resume else "",
        )
        return
    diffs = config_differences(dump, DefaultTrainer.auto_scale_workers(cfg, world_size))
    if not diffs:
        if not resume:
            logger.warning(
                "%s holds checkpoints of this config (last: %s); without --resume this run starts at "
                "iteration 0 and overwrites them",
                cfg.OUTPUT_DIR,
                path,
            )
        return
    listing = "\n".join("  %s: %r in the checkpoint, %r in this run" % d for d in diffs[:30])
    if len(diffs) > 30:
        listing += "\n  ... and %d more" % (len(diffs) - 30)
    allowed = ", ".join(p + "*" if p.endswith(".") else p for p in RESUME_MAY_DIFFER)
    if resume:
        msg = (
            "--resume: %s was trained with another config than this run's. These keys differ:\n%s\n"
            "Resume with the config the checkpoint was trained with (its 'config' entry; %s holds it "
            "unless another run rewrote it), train this config in another OUTPUT_DIR, or pass "
            "--allow-config-change to resume anyway (the model and optimizer must still fit). Keys that "
            "may differ on resume: %s."
            % (path, listing, os.path.join(cfg.OUTPUT_DIR, "config.yaml"), allowed)
        )
    else:
        msg = (
            "OUTPUT_DIR %s holds checkpoints of another config (last: %s): training anew there would "
            "overwrite them and config.yaml. These keys differ:\n%s\nSet another OUTPUT_DIR, continue "
            "that run with its own config and --resume, or pass --allow-config-change to overwrite it."
            % (cfg.OUTPUT_DIR, path, listing)
        )
    if not allow_change:
        raise ResumeConfigMismatch(msg)
    logger.warning("--allow-config-change: going on although %s", msg.split("\n", 1)[0])


@contextlib.contextmanager
def guard_output_dir(
    cfg,
    *,
    train: bool,
    resume: bool = False,
    allow_config_change: bool = False,
    world_size: int = 1,
):
    """Hold ``cfg.OUTPUT_DIR`` for a run (exclusively for training, shared for evaluation) and, for
    training, check the recorded config (:func:`check_output_dir_config`). Take it in one process per
    run (the launcher on machine 0) before anything is written into ``OUTPUT_DIR``."""
    if not cfg.OUTPUT_DIR:
        yield
        return
    with OutputDirLock(
        cfg.OUTPUT_DIR, exclusive=train, purpose="a training run" if train else "an evaluation"
    ):
        if train:
            check_output_dir_config(
                cfg, resume=resume, allow_change=allow_config_change, world_size=world_size
            )
        yield
