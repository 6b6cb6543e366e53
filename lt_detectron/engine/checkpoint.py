"""Safe, standard checkpoints: ``LTCheckpointer`` and the one loader every checkpoint read goes through.

- **Nothing but tensors and plain types is ever unpickled.** :func:`load_checkpoint_file` reads
  ``.pth`` (and every other torch file) with ``torch.load(weights_only=True)`` and detectron2's
  ``.pkl`` weights with a restricted unpickler that builds NumPy arrays, dtypes and plain
  containers only. Any other object (a crafted ``__reduce__``, a pickled class) is refused with
  :class:`UnsafeCheckpointError`, naming the file and the object, before any of it runs.
- **Checkpoints are plain data.** ``save`` refuses to write a value that ``weights_only=True``
  would refuse (the error names the key), so ``model_final.pth`` loads in stock detectron2
  (``DetectionCheckpointer``, ``DefaultPredictor``). RNG states are stored as tensors and ints
  (:func:`rng_state_to_plain`).
- **Atomic writes.** A checkpoint is written to a temporary file in the same folder, flushed,
  fsync'ed and renamed; only then is ``last_checkpoint`` replaced, the same way. A crash leaves
  the previous checkpoint and ``last_checkpoint`` intact.
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
import codecs
import collections
import logging
import os
import pickle
import random
import re
import tempfile
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import Detectron2Handler

__all__ = [
    "LTCheckpointer",
    "CheckpointClassMismatch",
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
    pass


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (base class)."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds objects other than tensors / arrays and plain types: refused, nothing ran."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, empty or not a checkpoint at all."""


class WeightsDownloadError(CheckpointError):
    """A ``MODEL.WEIGHTS`` URL could not be downloaded (no network, wrong URL)."""


# ---------------------------------------------------------------------------------------------
# Reading: the one safe loader
# ---------------------------------------------------------------------------------------------


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    # protocol-2 pickles of bytes (Python 3 writers) are ``_codecs.encode(str, "latin1")``
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed for latin1 str -> bytes only")
    return codecs.encode(obj, encoding, errors)


def _allowed_pkl_globals() -> Dict[tuple, Any]:
    """The globals a detectron2 / Detectron / torchvision-converted ``.pkl`` needs: NumPy's array,
    dtype and scalar reconstructors (under NumPy 1 and 2 module names), plain containers."""
    recon = np.zeros(1).__reduce__()[0]  # numpy's ndarray reconstructor (protocol <= 4)
    frombuf = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 (in-band buffers)
    scalar = np.float32(0).__reduce__()[0]
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
    }
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(pkg + ".multiarray", "_reconstruct")] = recon
        allowed[(pkg + ".multiarray", "scalar")] = scalar
        allowed[(pkg + ".numeric", "_frombuffer")] = frombuf
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    _allowed = _allowed_pkl_globals()

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafeCheckpointError("%s.%s" % (module, name))
        return obj


_SAFE_HINT = (
    "lt_detectron loads only tensors, NumPy arrays and plain Python types from checkpoint files "
    "(torch.load(weights_only=True); a restricted unpickler for .pkl) and never runs code from them. "
    "If this is your own, trusted file written by an older lt_detectron (which pickled the NumPy RNG "
    "state), re-save its weights once: torch.save({'model': torch.load(F, weights_only=False)['model']}, F2) "
    "(this runs the file's code: do it only for files you trust)."
)


def _torch_refusal(e: Exception, path: str):
    """``(reason, unsafe)`` for torch's weights_only refusal ``e``: unsafe when the file is a pickle
    stream that names a disallowed object or opcode; ``(None, False)`` when ``e`` is another error."""
    msg = str(e)
    if not isinstance(e, pickle.UnpicklingError) or "weights only load failed" not in msg.lower():
        return None, False
    m = re.search(r"(Trying to load unsupported[^\n]*|Unsupported[^\n]*)", msg)
    reason = m.group(1).strip() if m else "refused by torch.load(weights_only=True)"
    if "global" in reason.lower():
        return reason, True  # a named object (class, function) that is not allowed
    with open(path, "rb") as f:
        is_pickle = f.read(1) == b"\x80"  # PROTO opcode: a pickle stream, not a damaged zip file
    return reason, is_pickle


def load_checkpoint_file(path: str) -> Any:
    """Load a checkpoint or weights file without executing anything from it.

    ``.pkl``: detectron2 / Detectron (caffe2) model-zoo format, pickled NumPy arrays in plain
    containers (Python 2 pickles too). Anything else: a torch file, ``torch.load(weights_only=True)``
    on CPU. Returns the unpickled object as stored (no format normalisation).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: it holds other objects (refused before any of them is built).
        CorruptCheckpointError: truncated, empty or unreadable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("checkpoint %s does not exist" % os.path.abspath(path))
    if path.endswith(".pkl"):
        try:
            with open(path, "rb") as f:
                return _RestrictedUnpickler(f, encoding="latin1").load()
        except UnsafeCheckpointError as e:
            raise UnsafeCheckpointError(
                "refusing to load %s: it contains the Python object %s, which is not a NumPy array, dtype "
                "or plain container. %s" % (os.path.abspath(path), e, _SAFE_HINT)
            ) from None
        except Exception as e:
            raise CorruptCheckpointError(
                "cannot read %s as a pickled weights file (%s: %s): the file is truncated or corrupt; "
                "download or copy it again" % (os.path.abspath(path), type(e).__name__, e)
            ) from None
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    except Exception as e:
        reason, unsafe = _torch_refusal(e, path)
        if unsafe:
            raise UnsafeCheckpointError(
                "refusing to load %s: it contains objects other than tensors and plain types (%s). %s"
                % (os.path.abspath(path), reason, _SAFE_HINT)
            ) from None
        detail = reason or (str(e).strip().splitlines() or [""])[0][:300]
        raise CorruptCheckpointError(
            "cannot read checkpoint %s (%s: %s): the file is truncated or corrupt (an interrupted write or "
            "copy?)" % (os.path.abspath(path), type(e).__name__, detail)
        ) from None


# ---------------------------------------------------------------------------------------------
# Writing: plain data, atomically
# ---------------------------------------------------------------------------------------------

_PLAIN_LEAVES = (torch.Tensor, bool, int, float, complex, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def _check_plain(obj, where: str = "checkpoint"):
    """Raise TypeError naming the key of the first value ``weights_only=True`` would refuse."""
    if isinstance(obj, _PLAIN_LEAVES):
        return
    if isinstance(obj, dict):  # dict, OrderedDict
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None), tuple)):
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


def _fsync_dir(folder: str):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb"):
    """Write ``path`` through ``write(file)`` into a temporary file of the same folder, flush,
    fsync and rename it over ``path``. On any error the temporary file is removed and ``path``
    keeps its previous content."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


# ---------------------------------------------------------------------------------------------
# RNG states as tensors and plain types
# ---------------------------------------------------------------------------------------------


def rng_state_to_plain(torch_state, numpy_state, python_state) -> Dict[str, Any]:
    """torch / NumPy / Python RNG states -> a dict of tensors and plain types."""
    name, keys, pos, has_gauss, cached = numpy_state
    version, internal, gauss_next = python_state
    return {
        "torch": torch_state.clone(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
    }


def rng_state_from_plain(d: Dict[str, Any]):
    """Inverse of :func:`rng_state_to_plain`: ``(torch ByteTensor, numpy tuple, python tuple)``."""
    n, p = d["numpy"], d["python"]
    numpy_state = (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    python_state = (p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"])
    return d["torch"], numpy_state, python_state


def get_rng_state() -> Dict[str, Any]:
    """This process's torch (CPU), NumPy and Python RNG states, as plain data."""
    return rng_state_to_plain(torch.get_rng_state(), np.random.get_state(), random.getstate())


def set_rng_state(d: Dict[str, Any], torch_too: bool = True):
    t, n, p = rng_state_from_plain(d)
    np.random.set_state(n)
    random.setstate(p)
    if torch_too:
        torch.set_rng_state(t)


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's :func:`get_rng_state`, in rank order (a collective: call it on all ranks).
    World size 1 needs no process group."""
    return comm.all_gather(get_rng_state())


def rng_state_for_rank(per_rank: List[Dict[str, Any]], rank: int, world_size: int):
    """The saved RNG state rank ``rank`` restores: ``(state or None, note or None)``.

    Same world size: the rank's own state. Another world size (exact resume is impossible then,
    the data shards differ too): ranks that existed restore the state of the same rank; new
    ranks get ``None`` and should re-seed (the note says which, for the log)."""
    saved = len(per_rank)
    if saved == world_size:
        return per_rank[rank], None
    if rank < saved:
        return per_rank[rank], (
            "the checkpoint holds the RNG states of %d process(es), this run has %d: rank %d restores "
            "the saved state of rank %d; the resumed run will not repeat the interrupted one exactly"
            % (saved, world_size, rank, rank)
        )
    return None, (
        "the checkpoint holds the RNG states of %d process(es), this run has %d: rank %d has no saved "
        "state and is re-seeded from rank 0's saved state plus its rank" % (saved, world_size, rank)
    )


def reseed_from(state: Dict[str, Any], rank: int) -> int:
    """Seed torch / NumPy / Python (detectron2's ``seed_all_rng``) from a saved state plus ``rank``."""
    seed = (int(state["numpy"]["keys"][state["numpy"]["pos"] % 624]) + rank) % (2 ** 31)
    seed_all_rng(seed)
    return seed


# ---------------------------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------------------------

_PERIODIC_NAME = re.compile(r"^model_(\d+|final)\.pth$")


def _is_url(path: str) -> bool:
    return "://" in path


class LTCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with safe loading, atomic saving, resume fallback and
    ``MODEL.LT.REINIT_CLS`` (see the module docstring)."""

    def __init__(self, model, save_dir="", *, reinit_cls=False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.reinit_cls = reinit_cls

    # -- reading ---------------------------------------------------------------------------
    def _local_path(self, path: str) -> str:
        """``path`` as a local file; URLs are downloaded (cached) with a clear error offline."""
        if os.path.isfile(path) or not _is_url(path):
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    "checkpoint %s does not exist (MODEL.WEIGHTS, or the file named in %s)"
                    % (os.path.abspath(path), os.path.join(self.save_dir or ".", "last_checkpoint"))
                )
            return path
        url = path
        if path.startswith(Detectron2Handler.PREFIX):
            url = Detectron2Handler.S3_DETECTRON2_PREFIX + path[len(Detectron2Handler.PREFIX):]
        try:
            return self.path_manager.get_local_path(path)
        except Exception as e:
            raise WeightsDownloadError(
                "MODEL.WEIGHTS = %r could not be downloaded from %s (%s: %s). Without network access, "
                "download the file on a machine that has it, copy it here and set MODEL.WEIGHTS to the "
                "local file (e.g. MODEL.WEIGHTS /data/weights/%s); or train from scratch with a "
                "from-scratch config (MODEL.WEIGHTS \"\")." % (path, url, type(e).__name__, e, path.rsplit("/", 1)[-1])
            ) from None

    def load(self, path, checkpointables=None):
        if path:
            path = self._local_path(path)
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename):
        data = load_checkpoint_file(filename)
        if filename.endswith(".pkl"):
            # detectron2's .pkl conventions (DetectionCheckpointer._load_file), minus pickle.load
            if not isinstance(data, dict):
                raise CorruptCheckpointError("%s: expected a dict of arrays, got a %s" % (filename, type(data).__name__))
            if "model" in data and "__author__" in data:
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            if "blobs" in data:  # Caffe2 / Detectron detection models
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            if not isinstance(data, dict) or "model_state" not in data:
                raise CorruptCheckpointError("cannot load .pyth file %s: pycls checkpoints must contain 'model_state'" % filename)
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
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
                "; ".join("%s %s in the checkpoint, %s in the model" % (k, list(a), list(b)) for k, a, b in mismatched),
                ", ".join(dropped),
            )
        elif mismatched:
            k, got, want = mismatched[0]
            raise CheckpointClassMismatch(
                "checkpoint classifier %s has shape %s but the model expects %s: the checkpoint was "
                "trained for another number of classes (or another classification loss). Set "
                "MODEL.ROI_HEADS.NUM_CLASSES to match the checkpoint, or set MODEL.LT.REINIT_CLS True "
                "to re-initialise the classifier (BAGS decoupled training)." % (k, list(got), list(want))
            )
        elif self.reinit_cls and any("cls_score" in k for k in ckpt):
            logger.info(
                "MODEL.LT.REINIT_CLS: the checkpoint's classifier fits the model; it is loaded, not "
                "re-initialised (resuming or evaluating a model trained with the re-initialised classifier)"
            )
        return super()._load_model(checkpoint)

    # -- writing ---------------------------------------------------------------------------
    def save(self, name: str, **kwargs: Any) -> None:
        """Like ``Checkpointer.save``, but plain data only and written atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        _check_plain(data, "checkpoint %s" % basename)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename), mode="w"
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
            if _PERIODIC_NAME.match(f) and os.path.abspath(os.path.join(self.save_dir, f)) not in done
        ]
        return sorted(files, key=lambda p: (os.path.getmtime(p), os.path.basename(p)), reverse=True)

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
                    "Cannot resume from %s (%s). %s", tried[-1], e,
                    ("Falling back to the newest intact checkpoint candidate %s." % candidate) if candidate else "",
                )
                continue
            if candidate != named:
                self.logger.warning(
                    "Resumed from %s instead of %s (named in %s, unreadable)",
                    candidate, named, os.path.join(self.save_dir, "last_checkpoint"),
                )
            return ret
        raise CorruptCheckpointError(
            "cannot resume from %s: no intact checkpoint. Tried:\n  %s\nRemove %s to start the run anew "
            "(MODEL.WEIGHTS is used then), or restore a checkpoint."
            % (self.save_dir, "\n  ".join(errors), os.path.join(self.save_dir, "last_checkpoint"))
        )
