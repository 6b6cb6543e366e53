"""The one loader every checkpoint read goes through: nothing but tensors and plain types is unpickled.

:func:`load_checkpoint_file` reads ``.pth`` (and every other torch file) with
``torch.load(weights_only=True)`` and detectron2's ``.pkl`` weights with a restricted unpickler
that builds NumPy arrays, dtypes and plain containers only. Any other object (a crafted
``__reduce__``, a pickled class) is refused with :class:`UnsafeCheckpointError`, naming the file
and the object, before any of it runs. A truncated or damaged file is :class:`CorruptCheckpointError`.

The work and memory a ``.pkl`` can cause are bounded by its size: arrays are built only the way
NumPy pickles them (never ``numpy.ndarray(shape, dtype, buffer, offset, strides)`` over crafted
memory: zero or negative strides), their bytes, counted once per reference, may not exceed
:data:`ARRAY_BYTES_PER_FILE_BYTE` times the file's size, and the object tree may not hold more
references than the file has bytes (shared sub-containers that would multiply). Arrays written on
a big-endian machine are converted to the native byte order.
"""

import codecs
import collections
import os
import pickle
import re
from typing import Any, Dict

import numpy as np
import torch

__all__ = [
    "ARRAY_BYTES_PER_FILE_BYTE",
    "CheckpointError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "load_checkpoint_file",
]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (base class)."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds objects other than tensors / arrays and plain types: refused, nothing ran."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, empty or not a checkpoint at all."""


class _CraftedPickle(UnsafeCheckpointError):
    """Raised inside the loader: the file asks for more work or memory than its size can hold."""


# A pickled array stores each of its bytes once (latin1 / UTF-8 strings take 1-2 file bytes per data
# byte), so the arrays of an honest .pkl hold fewer bytes than the file; 2x leaves room, a crafted
# file that references one array many times or views a few bytes as gigabytes does not fit.
ARRAY_BYTES_PER_FILE_BYTE = 2
_ARRAY_BYTES_SLACK = 4096
# nesting of an honest weights file: {"model": {name: array}} (scalars, tuples of ints in trainers)
_MAX_DEPTH = 32


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
        raise UnsafeCheckpointError(
            "a NumPy dtype of kind %r (structured, void or object)" % d.kind
        )
    plain = np.dtype(d.str)
    if d.flags != plain.flags or d.itemsize != plain.itemsize:
        raise UnsafeCheckpointError("a NumPy dtype with altered internal state")


def _dtype(obj, align=False, copy=False):
    """``numpy.dtype`` for pickles: type strings of plain kinds only."""
    if not isinstance(obj, str):
        raise UnsafeCheckpointError("numpy.dtype(%s)" % type(obj).__name__)
    d = np.dtype(
        obj, bool(align), True
    )  # always a copy: a BUILD must never reach numpy's singletons
    _check_dtype(d)
    return d


def _bytearray(*args):
    """``bytearray`` for pickles: from bytes or (str, encoding), never a size (memory)."""
    if not args or not isinstance(args[0], (bytes, str)):
        raise UnsafeCheckpointError("bytearray(%s)" % ", ".join(type(a).__name__ for a in args))
    return bytearray(*args)


_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's ndarray reconstructor (protocol <= 4)


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` for pickles: a plain ndarray of an empty shape, as NumPy pickles
    every array (the data comes with the BUILD that follows and is checked against its size);
    never a pre-sized allocation."""
    if subtype is not np.ndarray:
        raise UnsafeCheckpointError("an array subclass %r" % (subtype,))
    if not isinstance(shape, tuple) or any(not isinstance(n, int) or n < 0 for n in shape):
        raise UnsafeCheckpointError("numpy _reconstruct with shape %r" % (shape,))
    if int(np.prod(shape, dtype=object)) != 0:
        raise _CraftedPickle(
            "numpy _reconstruct pre-allocating shape %r (NumPy pickles an empty array and sends "
            "the data separately)" % (shape[:8],)
        )
    return _NP_RECONSTRUCT(subtype, shape, dtype)


def _allowed_pkl_globals() -> Dict[tuple, Any]:
    """The globals a detectron2 / Detectron / torchvision-converted ``.pkl`` needs: NumPy's array,
    dtype and scalar reconstructors (under NumPy 1 and 2 module names), plain containers."""
    recon = _reconstruct
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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._own_dtypes = []  # dtypes this file made with copy=True (never numpy's singletons)

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafeCheckpointError("%s.%s" % (module, name))
        return obj

    def load_reduce(self):
        if self.stack[-2] is np.ndarray:
            # ndarray(shape, dtype, buffer, offset, strides): a view whose shape and strides the
            # file chooses (a 4-byte buffer seen as exabytes, negative strides); NumPy's own
            # pickles never call it (they use _reconstruct + BUILD or _frombuffer)
            raise _CraftedPickle(
                "it calls numpy.ndarray(shape, dtype, buffer, offset, strides) directly (an array "
                "view over crafted memory; NumPy's own pickles never do)"
            )
        func, args = self.stack[-2], self.stack[-1]
        for a in args if isinstance(args, tuple) else ():
            if isinstance(a, np.dtype):
                _check_dtype(a)
        pickle._Unpickler.load_reduce(self)
        _check_numpy_result(self.stack[-1])
        if (
            func is _dtype
            and isinstance(args, tuple)
            and len(args) == 3
            and isinstance(args[2], int)
            and args[2] == 1
        ):
            # numpy.dtype(str, align, copy=True), as NumPy pickles every dtype: a private copy,
            # whose BUILD may set the other byte order (a file written on a big-endian machine)
            self._own_dtypes.append(self.stack[-1])

    def load_build(self):
        # the state is checked BEFORE it is applied: numpy applies a dtype's state in place
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            _check_dtype(inst)
            # the one state a plain dtype of this type string has (no fields, subarray, flags);
            # on a copy the file asked for, also that of the other byte order
            plain = np.dtype(inst.str, False, True)
            allowed = [plain.__reduce__()[2]]
            if any(d is inst for d in self._own_dtypes):
                allowed.append(plain.newbyteorder("S").__reduce__()[2])
            if state not in allowed:
                raise UnsafeCheckpointError(
                    "a NumPy dtype state other than that of a plain %s" % inst.str
                )
        elif isinstance(inst, np.ndarray):
            if not (
                isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
            ):
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


def _bounded(obj, file_bytes: int):
    """A copy of the unpickled tree (containers rebuilt, arrays in native byte order) after checking
    that it fits the file: at most ``file_bytes`` references in all, nesting at most ``_MAX_DEPTH``,
    no array with a zero or negative stride, and at most ``ARRAY_BYTES_PER_FILE_BYTE * file_bytes``
    array bytes counted once per reference (what the checkpoint loader will copy)."""
    budget = ARRAY_BYTES_PER_FILE_BYTE * file_bytes + _ARRAY_BYTES_SLACK
    left = {"refs": file_bytes + 16, "bytes": budget}

    def walk(o, depth, where):
        left["refs"] -= 1
        if left["refs"] < 0:
            raise _CraftedPickle(
                "more object references than the file has bytes (containers shared many times)"
            )
        if depth > _MAX_DEPTH:
            raise _CraftedPickle(
                "containers nested more than %d deep (at %s)" % (_MAX_DEPTH, where)
            )
        if isinstance(o, (np.ndarray, np.generic)):
            arr = np.asarray(o)
            if any(st <= 0 for st, n in zip(arr.strides, arr.shape) if n > 1):
                raise _CraftedPickle("the array %s has strides %s" % (where, arr.strides))
            left["bytes"] -= arr.nbytes
            if left["bytes"] < 0:
                raise _CraftedPickle(
                    "its arrays hold more than %d bytes (%d x the file's %d bytes), reached at %s: "
                    "arrays viewed or referenced many times"
                    % (budget, ARRAY_BYTES_PER_FILE_BYTE, file_bytes, where)
                )
            if not o.dtype.isnative:  # written on a big-endian machine: same values, native order
                return o.astype(o.dtype.newbyteorder("="))
            return o
        if isinstance(o, dict):
            items = [(k, walk(v, depth + 1, "%s[%r]" % (where, k))) for k, v in o.items()]
            return type(o)(items)
        if isinstance(o, (list, tuple)):
            return type(o)(walk(v, depth + 1, "%s[%d]" % (where, i)) for i, v in enumerate(o))
        return o

    return walk(obj, 0, "the top level")


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
                size = os.fstat(f.fileno()).st_size
                return _bounded(_RestrictedUnpickler(f, encoding="latin1").load(), size)
        except _CraftedPickle as e:
            raise UnsafeCheckpointError(
                "refusing to load %s (%d bytes): %s. A pickled weights file stores each array's "
                "bytes once; this one was crafted or damaged: download or convert it again"
                % (os.path.abspath(path), size, e)
            ) from None
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
