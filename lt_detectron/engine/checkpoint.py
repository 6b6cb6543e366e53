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


# Array element kinds that hold no Python object pointers: bool, ints, floats, complex, and
# fixed-size byte / unicode strings.
_SAFE_KINDS = "biufcSU"


def _check_dtype(d):
    """Refuse a NumPy dtype unless it is a plain numeric / fixed-string one. A pickle may BUILD a
    dtype with any state (object fields hidden behind a void type, altered flags) and so forge
    object pointers; only metadata is read here, never the elements."""
    if not isinstance(d, np.dtype):
        raise UnsafeCheckpointError("a NumPy dtype argument of type %s" % type(d).__name__)
    if d.kind not in _SAFE_KINDS or d.names is not None or d.subdtype is not None or d.hasobject:
        raise UnsafeCheckpointError("a NumPy dtype of kind %r (structured, void or object)" % d.kind)
    plain = np.dtype(d.str)
    if d.flags != plain.flags or d.itemsize != plain.itemsize:
        raise UnsafeCheckpointError("a NumPy dtype with altered internal state")


def _dtype(obj, align=False, copy=False):
    """``numpy.dtype`` for pickles: type strings of plain kinds only."""
    if not isinstance(obj, str):
        raise UnsafeCheckpointError("numpy.dtype(%s)" % type(obj).__name__)
    d = np.dtype(obj, bool(align), True)  # always a copy: a BUILD must never reach numpy's singletons
    _check_dtype(d)
    return d


def _bytearray(*args):
    """``bytearray`` for pickles: from bytes or (str, encoding), never a size (memory)."""
    if not args or not isinstance(args[0], (bytes, str)):
        raise UnsafeCheckpointError("bytearray(%s)" % ", ".join(type(a).__name__ for a in args))
    return bytearray(*args)


def _allowed_pkl_globals() -> Dict[tuple, Any]:
    """The globals a detectron2 / Detectron / torchvision-converted ``.pkl`` needs: NumPy's array,
    dtype and scalar reconstructors (under NumPy 1 and 2 module names), plain containers."""
    recon = np.zeros(1).__reduce__()[0]  # numpy's ndarray reconstructor (protocol <= 4)
    frombuf = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 (in-band buffers)
    scalar = np.float32(0).__reduce__()[0]
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "bytearray"): _bytearray,
        ("__builtin__", "bytearray"): _bytearray,
    }
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(pkg + ".multiarray", "_reconstruct")] = recon
        allowed[(pkg + ".multiarray", "scalar")] = scalar
        allowed[(pkg + ".numeric", "_frombuffer")] = frombuf
    return allowed


def _check_numpy_result(obj):
    if isinstance(obj, np.dtype):
        _check_dtype(obj)
    elif isinstance(obj, (np.ndarray, np.generic)):
        _check_dtype(obj.dtype)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with an allow-list of globals, every NumPy dtype checked when it
    is made or rebuilt (REDUCE, BUILD), BUILD allowed on NumPy objects only, and the opcodes that
    instantiate arbitrary classes (NEWOBJ, NEWOBJ_EX, INST, OBJ) refused."""

    _allowed = _allowed_pkl_globals()
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafeCheckpointError("%s.%s" % (module, name))
        return obj

    def load_reduce(self):
        for a in self.stack[-1] if isinstance(self.stack[-1], tuple) else ():
            if isinstance(a, np.dtype):
                _check_dtype(a)
        pickle._Unpickler.load_reduce(self)
        _check_numpy_result(self.stack[-1])

    def load_build(self):
        # the state is checked BEFORE it is applied: numpy applies a dtype's state in place
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            _check_dtype(inst)
            # the one state a plain dtype of this type string has (no fields, subarray, flags)
            if state != np.dtype(inst.str, False, True).__reduce__()[2]:
                raise UnsafeCheckpointError("a NumPy dtype state other than that of a plain %s" % inst.str)
        elif isinstance(inst, np.ndarray):
            if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)):
                raise UnsafeCheckpointError("a NumPy array state of an unexpected form")
            _check_dtype(state[2])
        else:
            raise UnsafeCheckpointError("a BUILD (object state) on a %s" % type(inst).__name__)
        pickle._Unpickler.load_build(self)
        _check_numpy_result(inst)

    def _refuse(self):
        raise UnsafeCheckpointError("an opcode that instantiates arbitrary classes")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    for _op in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.INST, pickle.OBJ):
        dispatch[_op[0]] = _refuse
    del _op


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
    # an opcode torch refuses inside a pickle stream or a well-formed torch zip file is a crafted
    # file (refused, never skipped as "corrupt"); random bytes are damage
    with open(path, "rb") as f:
        head = f.read(2)
    return reason, head[:1] == b"\x80" or head == b"PK"


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
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as open() would create it (mkstemp makes 0600)
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
    """This process's torch (CPU, and the current CUDA device's when CUDA is in use), NumPy and
    Python RNG states, as plain data. (detectron2's ROI sampling draws from the CUDA generator.)"""
    d = rng_state_to_plain(torch.get_rng_state(), np.random.get_state(), random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        d["cuda"] = torch.cuda.get_rng_state()
    return d


def set_rng_state(d: Dict[str, Any], torch_too: bool = True):
    t, n, p = rng_state_from_plain(d)
    np.random.set_state(n)
    random.setstate(p)
    if d.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(d["cuda"])
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
            if not os.path.isfile(path) and comm.get_world_size() == 1:
                raise FileNotFoundError(
                    "checkpoint %s does not exist (MODEL.WEIGHTS, or the file named in %s)"
                    % (os.path.abspath(path), os.path.join(self.save_dir or ".", "last_checkpoint"))
                )
            # with several processes a file missing on some machines is detectron2's case: the
            # ranks that have it load it and the weights are broadcast (DetectionCheckpointer.load)
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
