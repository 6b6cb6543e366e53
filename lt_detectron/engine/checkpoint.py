"""Safe, standard checkpoints: ``LTCheckpointer``.

- **Nothing but tensors and plain types is ever unpickled.** :func:`load_checkpoint_file` reads
  ``.pth`` (and every other torch file) with ``torch.load(weights_only=True)`` and detectron2's
  ``.pkl`` weights with a restricted unpickler that builds NumPy arrays, dtypes and plain
  containers only. Any other object (a crafted ``__reduce__``, a pickled class) is refused with
  :class:`UnsafeCheckpointError`, naming the file and the object, before any of it runs
  (:mod:`.safe_load`).
- **Checkpoints are plain data.** ``save`` refuses to write a value that ``weights_only=True``
  would refuse (the error names the key), so ``model_final.pth`` loads in stock detectron2
  (``DetectionCheckpointer``, ``DefaultPredictor``). RNG states are stored as tensors and ints
  (:mod:`.rng_state`).
- **Atomic writes.** A checkpoint is written to a temporary file in the same folder, flushed,
  fsync'ed and renamed; only then is ``last_checkpoint`` replaced, the same way. A crash leaves
  the previous checkpoint and ``last_checkpoint`` intact (:func:`~lt_detectron.utils.atomic.atomic_write`).
  The first save of a checkpointer removes the temporary files of writers that were killed (their
  process is gone; :func:`~lt_detectron.utils.atomic.remove_stale_temps`).
- **The run's config is recorded.** Given ``config_dump`` (``cfg.dump()``, a plain string), every
  checkpoint stores it under ``"config"``; ``tools/train_net.py`` compares it with the config of a
  run that resumes from (or would overwrite) the checkpoint (:mod:`.run_guard`).
- **Resume falls back.** When the file ``last_checkpoint`` names is missing, truncated or
  corrupt, ``resume_or_load`` warns and resumes from the newest intact ``model_*.pth`` of the
  folder. A refused (unsafe) file is an error, never skipped.
- **Classifier re-initialisation only when it does not fit.** With ``MODEL.LT.REINIT_CLS``
  (BAGS' decoupled recipe) the checkpoint's ``cls_score`` is dropped only when its shape differs
  from the model's (the decoupling step, from a softmax model); a checkpoint whose classifier
  fits (``--resume``, ``--eval-only`` of the trained model) is loaded as is. Either case is
  logged. Without ``REINIT_CLS`` a shape mismatch is :class:`CheckpointClassMismatch`.
- **Offline weights.** A ``MODEL.WEIGHTS`` URL (``detectron2://...``, ``https://...``) that cannot
  be downloaded is :class:`WeightsDownloadError`, naming ``MODEL.WEIGHTS``, the URL and the fix.
"""

import collections
import logging
import os
import re
from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from detectron2.utils.file_io import Detectron2Handler

from ..utils.atomic import atomic_write, remove_stale_temps
from .backbone_keys import CheckpointBackboneMismatch, check_unexpected_backbone_keys
from .rng_state import (
    gather_rng_states,
    get_rng_state,
    reseed_from,
    rng_state_for_rank,
    rng_state_from_plain,
    rng_state_to_plain,
    set_rng_state,
)
from .safe_load import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)

__all__ = [
    "LTCheckpointer",
    "CheckpointClassMismatch",
    "CheckpointBackboneMismatch",
    "CheckpointError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "WeightsDownloadError",
    "load_checkpoint_file",
    "atomic_write",
    "rng_state_to_plain",
    "rng_state_from_plain",
    "get_rng_state",
    "set_rng_state",
    "gather_rng_states",
    "rng_state_for_rank",
    "reseed_from",
]

logger = logging.getLogger(__name__)


class CheckpointClassMismatch(RuntimeError):
    """The checkpoint's classifier has another shape than the model's (and ``MODEL.LT.REINIT_CLS`` is off)."""


class WeightsDownloadError(CheckpointError):
    """A ``MODEL.WEIGHTS`` URL could not be downloaded (no network, wrong URL)."""


# the alternatives when the ImageNet weights a config names are not at hand; NOT ``MODEL.WEIGHTS ""``
# on a FrozenBN config: frozen random statistics make the loss diverge within a few iterations
NO_WEIGHTS_HINT = (
    "Without these weights: convert torchvision ImageNet weights you have on disk with "
    "tools/convert_torchvision_to_detectron2.py (it prints the MODEL.WEIGHTS and input options to "
    "use), or train from scratch with a *_gn_scratch_* config (GroupNorm, MODEL.WEIGHTS \"\" "
    "already), e.g. configs/lvis_v1/eqlv2_mask_rcnn_R_50_FPN_gn_scratch_3x.yaml. Emptying "
    "MODEL.WEIGHTS of a FrozenBN config is no alternative: it diverges within a few iterations."
)


# ---------------------------------------------------------------------------------------------
# Writing: plain data only
# ---------------------------------------------------------------------------------------------

_PLAIN_LEAVES = (
    torch.Tensor,
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    type(None),
    torch.Size,
    torch.dtype,
    torch.device,
)


def _check_plain(obj, where: str = "checkpoint"):
    """Raise TypeError naming the key of the first value ``weights_only=True`` would refuse."""
    # exact types: subclasses (np.float64 is a float, defaultdict a dict) are refused on load
    if type(obj) in _PLAIN_LEAVES or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, collections.OrderedDict):
        for k, v in obj.items():
            if type(k) is tuple:
                _check_plain(k, "%s: key %r" % (where, k))
            elif type(k) not in (str, int, float, bool, type(None)):
                raise TypeError("%s: key %r is a %s" % (where, k, type(k).__name__))
            _check_plain(v, "%s[%r]" % (where, k))
        return
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, "%s[%d]" % (where, i))
        return
    raise TypeError(
        "%s is a %s.%s: checkpoints hold tensors and plain Python types only (so that they load with "
        "torch.load(weights_only=True) and in stock detectron2); convert it in the state_dict() that "
        "returns it" % (where, type(obj).__module__, type(obj).__qualname__)
    )


def _check_pkl_arrays(filename: str, model: Any, where: str):
    """A .pkl's weights must be a dict of name -> array (what detectron2 converts to tensors)."""
    if not isinstance(model, dict):
        raise CorruptCheckpointError(
            "%s: the weights%s are a %s, expected a dict of name -> NumPy array (detectron2's .pkl "
            "format: {'model': {name: array}, '__author__': ...}); convert the file again"
            % (os.path.abspath(filename), where, type(model).__name__)
        )
    for k, v in model.items():
        if not isinstance(k, str) or not isinstance(v, (np.ndarray, torch.Tensor)):
            raise CorruptCheckpointError(
                "%s: the weight %s%r is a %s, expected a NumPy array (detectron2's .pkl format: "
                "{'model': {name: array}, '__author__': ...}); convert the file again"
                % (os.path.abspath(filename), where, k, type(v).__name__)
            )


# ---------------------------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------------------------

_PERIODIC_NAME = re.compile(r"^model_(\d+|final)\.pth$")


def _is_url(path: str) -> bool:
    return "://" in path


class LTCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with safe loading, atomic saving, resume fallback and
    ``MODEL.LT.REINIT_CLS`` (see the module docstring)."""

    def __init__(
        self, model, save_dir="", *, reinit_cls=False, config_dump=None, **checkpointables
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.reinit_cls = reinit_cls
        self.config_dump = config_dump  # the run's cfg.dump(), saved as checkpoint["config"]
        self._temps_swept = False

    # -- reading ---------------------------------------------------------------------------
    def _local_path(self, path: str) -> str:
        """``path`` as a local file; URLs are downloaded (cached) with a clear error offline."""
        if os.path.isfile(path) or not _is_url(path):
            if not os.path.isfile(path) and comm.get_world_size() == 1:
                raise FileNotFoundError(
                    "checkpoint %s does not exist (MODEL.WEIGHTS, or the file named in %s). %s"
                    % (
                        os.path.abspath(path),
                        os.path.join(self.save_dir or ".", "last_checkpoint"),
                        NO_WEIGHTS_HINT,
                    )
                )
            # with several processes a file missing on some machines is detectron2's case: the
            # ranks that have it load it and the weights are broadcast (DetectionCheckpointer.load)
            return path
        url = path
        if path.startswith(Detectron2Handler.PREFIX):
            url = Detectron2Handler.S3_DETECTRON2_PREFIX + path[len(Detectron2Handler.PREFIX) :]
        try:
            return self.path_manager.get_local_path(path)
        except Exception as e:
            raise WeightsDownloadError(
                "MODEL.WEIGHTS = %r could not be downloaded from %s (%s: %s). Without network access, "
                "download the file on a machine that has it, copy it here and set MODEL.WEIGHTS to the "
                "local file (e.g. MODEL.WEIGHTS /data/weights/%s). %s"
                % (path, url, type(e).__name__, e, path.rsplit("/", 1)[-1], NO_WEIGHTS_HINT)
            ) from None

    def load(self, path, checkpointables=None):
        if path:
            path = self._local_path(path)
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename):
        self._weights_file = filename  # named by the backbone check of _load_model
        data = load_checkpoint_file(filename)
        if filename.endswith(".pkl"):
            # detectron2's .pkl conventions (DetectionCheckpointer._load_file), minus pickle.load
            if not isinstance(data, dict):
                raise CorruptCheckpointError(
                    "%s: expected a dict of arrays, got a %s" % (filename, type(data).__name__)
                )
            if "model" in data and "__author__" in data:
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                _check_pkl_arrays(filename, data["model"], "['model']")
                return data
            where = ""
            if "blobs" in data:  # Caffe2 / Detectron detection models
                data, where = data["blobs"], "['blobs']"
            _check_pkl_arrays(filename, data, where)
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            if not isinstance(data, dict) or "model_state" not in data:
                raise CorruptCheckpointError(
                    "cannot load .pyth file %s: pycls checkpoints must contain 'model_state'"
                    % filename
                )
            state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if not isinstance(data, dict) or "model" not in data:
            data = {"model": data}
        return data

    def _load_model(self, checkpoint):
        model_sd = self.model.state_dict()
        ckpt = checkpoint["model"]
        mismatched = []
        for k in list(ckpt.keys()):
            if "cls_score" not in k or k not in model_sd:
                continue
            v = ckpt[k]
            shape = tuple(v.shape) if hasattr(v, "shape") else None
            if shape is not None and shape != tuple(model_sd[k].shape):
                mismatched.append((k, shape, tuple(model_sd[k].shape)))
        if mismatched and self.reinit_cls:
            # the decoupling step: drop the whole layer (weight and bias) of every misfit classifier
            layers = sorted({k.rsplit(".", 1)[0] for k, _, _ in mismatched})
            dropped = [k for k in list(ckpt.keys()) if k.rsplit(".", 1)[0] in layers]
            for k in dropped:
                ckpt.pop(k)
            logger.info(
                "MODEL.LT.REINIT_CLS: the checkpoint's classifier does not fit the model (%s); it is "
                "re-initialised: not loading %s",
                "; ".join(
                    "%s %s in the checkpoint, %s in the model" % (k, list(a), list(b))
                    for k, a, b in mismatched
                ),
                ", ".join(dropped),
            )
        elif mismatched:
            k, got, want = mismatched[0]
            raise CheckpointClassMismatch(
                "checkpoint classifier %s has shape %s but the model expects %s: the checkpoint was "
                "trained for another number of classes (or another classification loss). Set "
                "MODEL.ROI_HEADS.NUM_CLASSES to match the checkpoint, or set MODEL.LT.REINIT_CLS True "
                "to re-initialise the classifier (BAGS decoupled training)."
                % (k, list(got), list(want))
            )
        elif self.reinit_cls and any("cls_score" in k for k in ckpt):
            logger.info(
                "MODEL.LT.REINIT_CLS: the checkpoint's classifier fits the model and is loaded "
                "(resuming and evaluation keep it; a training run that starts from MODEL.WEIGHTS "
                "re-initialises it next, e.g. cRT)"
            )
        incompatible = super()._load_model(checkpoint)
        # weights for another backbone (R-101 into R-50) are an error; heads' extra keys a warning
        check_unexpected_backbone_keys(
            self.model, incompatible.unexpected_keys, getattr(self, "_weights_file", "?")
        )
        return incompatible

    # -- writing ---------------------------------------------------------------------------
    def save(self, name: str, **kwargs: Any) -> None:
        """Like ``Checkpointer.save``, but plain data only and written atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.config_dump is not None:
            data["config"] = str(self.config_dump)
        data.update(kwargs)
        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        _check_plain(data, "checkpoint %s" % basename)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_stale_temps()
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def _remove_stale_temps(self):
        """Once per checkpointer: the temporary files of killed writes (their writer is gone)."""
        if self._temps_swept:
            return
        self._temps_swept = True
        for path in remove_stale_temps(self.save_dir):
            self.logger.warning("removed the temporary file of an interrupted write: %s", path)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename),
            mode="w",
        )

    # -- resuming --------------------------------------------------------------------------
    def _fallback_candidates(self, failed: List[str]) -> List[str]:
        """Other ``model_*.pth`` files of ``save_dir``, newest first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        done = {os.path.abspath(p) for p in failed}
        files = [
            os.path.join(self.save_dir, f)
            for f in os.listdir(self.save_dir)
            if _PERIODIC_NAME.match(f)
            and os.path.abspath(os.path.join(self.save_dir, f)) not in done
        ]

        def iteration(p):  # by the iteration in the name (a copy may change file times); final last
            it = _PERIODIC_NAME.match(os.path.basename(p)).group(1)
            return float("inf") if it == "final" else int(it)

        return sorted(files, key=iteration, reverse=True)

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """detectron2's ``resume_or_load``; on resume, a missing/truncated/corrupt checkpoint named in
        ``last_checkpoint`` falls back, with a warning, to the newest intact ``model_*.pth``."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        named = self.get_checkpoint_file()
        tried, errors = [], []
        candidate = named
        while candidate is not None:
            try:
                ret = self.load(candidate)
            except (CorruptCheckpointError, FileNotFoundError) as e:
                tried.append(candidate)
                errors.append(str(e))
                rest = self._fallback_candidates(tried)
                candidate = rest[0] if rest else None
                self.logger.warning(
                    "Cannot resume from %s (%s). %s",
                    tried[-1],
                    e,
                    ("Falling back to the newest intact checkpoint candidate %s." % candidate)
                    if candidate
                    else "",
                )
                continue
            if candidate != named:
                self.logger.warning(
                    "Resumed from %s instead of %s (named in %s, unreadable)",
                    candidate,
                    named,
                    os.path.join(self.save_dir, "last_checkpoint"),
                )
            return ret
        raise CorruptCheckpointError(
            "cannot resume from %s: no intact checkpoint. Tried:\n  %s\nRemove %s to start the run anew "
            "(MODEL.WEIGHTS is used then), or restore a checkpoint."
            % (self.save_dir, "\n  ".join(errors), os.path.join(self.save_dir, "last_checkpoint"))
        )
