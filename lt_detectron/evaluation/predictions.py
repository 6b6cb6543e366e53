"""Where predictions go: per-rank transfer files and the standard results json.

- :class:`RankPredictionStore`: in a distributed evaluation each rank writes its detection matrix
  (``.npy``, loaded with ``allow_pickle=False``) and masks (json) to a folder; rank 0 reads them all
  and removes them. Nothing is gathered through ``comm.gather`` and nothing is pickled.
- :func:`write_results_json`: Detectron2's results file (``lvis_instances_results.json`` /
  ``coco_instances_results.json``): a list of ``{"image_id", "category_id" (dataset id), "bbox"
  [x, y, w, h], "score"[, "segmentation" (RLE)]}``. Floats are written in shortest round-trip form
  (``polars`` or ``orjson`` when installed, else the standard library), so reading the file back
  gives the evaluated values bit for bit.
- :class:`JsonListWriter`: that json list written chunk by chunk, the one writer of
  :func:`write_results_json` and of :class:`~.results_stream.ResultsStream` (which writes it while
  inference runs).
- :func:`~.results_loading.load_results_json` (in :mod:`.results_loading`): such a file back as a
  detection matrix + RLEs, with errors that name the file and the fix.
"""

from __future__ import annotations

import itertools
import json
import operator
import os
import shutil
import tempfile
from typing import List, Optional, Tuple

import numpy as np

from .common import gc_paused

__all__ = [
    "RankPredictionStore",
    "BackgroundWrite",
    "write_results_json",
    "preload_results_writer",
    "results_file_name",
    "ResultsFileError",
]

COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")  # of a detection matrix


class ResultsFileError(ValueError):
    """A results json that cannot be evaluated; the message names the file and the fix."""


def results_file_name(protocol: str) -> str:
    """``lvis_instances_results.json`` / ``coco_instances_results.json`` (Detectron2's names)."""
    return f"{protocol}_instances_results.json"


# ---------------------------------------------------------------------------- per-rank transfer
class RankPredictionStore:
    """Per-rank prediction files in a folder shared by the ranks of one machine (or a shared FS).

    ``directory``: where to write (e.g. ``output_dir/lt_predictions``); ``None`` makes a temporary
    folder on rank 0 whose path is broadcast (a few bytes) to the other ranks. :meth:`cleanup`
    removes the files (and a temporary folder) once rank 0 has read them.
    """

    def __init__(self, directory: Optional[str], prefix: str):
        self._dir = directory
        self._prefix = prefix
        self._tmp = directory is None

    def _resolve_dir(self) -> str:
        from detectron2.utils import comm

        if self._dir is None:
            path = tempfile.mkdtemp(prefix="lt_eval_") if comm.get_rank() == 0 else None
            if comm.get_world_size() > 1:
                path = comm.all_gather(path)[0]
            self._dir = path
        os.makedirs(self._dir, exist_ok=True)
        return self._dir

    def _paths(self, rank: int) -> Tuple[str, str]:
        base = os.path.join(self._dir, f"{self._prefix}_rank{rank}")
        return base + ".npy", base + "_segm.json"

    def results_part(self, rank: int) -> str:
        """Where ``rank`` streams its rows of the results json (a json list,
        :class:`~.results_stream.ResultsStream`) in a given folder. Rank 0 joins them into the
        results json and removes them (:func:`~.results_stream.join_results_parts`), not
        :meth:`cleanup`: it reads them while the evaluation runs."""
        if self._dir is None:
            raise ValueError("the results json's per-rank parts need a folder (output_dir)")
        return os.path.join(self._dir, f"{self._prefix}_rank{rank}_results.json")

    def write(self, dets: np.ndarray, rles: Optional[List[dict]]) -> None:
        """Every rank calls this (collective when the folder is temporary)."""
        from detectron2.utils import comm

        self._resolve_dir()
        path, rpath = self._paths(comm.get_rank())
        np.save(
            path + ".part.npy", np.ascontiguousarray(dets, dtype=np.float64), allow_pickle=False
        )
        os.replace(path + ".part.npy", path)
        if rles is not None:
            with open(rpath + ".part", "w") as f:
                json.dump([_rle_to_json(r) for r in rles], f)
            os.replace(rpath + ".part", rpath)

    def read_all(
        self, world_size: int, with_masks: bool
    ) -> Tuple[np.ndarray, Optional[List[dict]]]:
        """On rank 0, after a barrier: every rank's predictions, concatenated in rank order."""
        arrs, rles = [], [] if with_masks else None
        for r in range(world_size):
            path, rpath = self._paths(r)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Predictions of rank {r} not found at {path}: in multi-machine runs output_dir "
                    "must be on a file system shared by all ranks."
                )
            arrs.append(np.load(path, allow_pickle=False))
            if with_masks:
                with open(rpath) as f:
                    rles.extend(_rle_from_json(x) for x in json.load(f))
        dets = np.concatenate(arrs, 0) if arrs else np.zeros((0, 7))
        return dets, rles

    def cleanup(self, world_size: int) -> None:
        """Remove the per-rank files (rank 0, after reading); a temporary folder goes entirely."""
        if self._dir is None:
            return
        if self._tmp:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            return
        for r in range(world_size):
            for p in self._paths(r):
                if os.path.isfile(p):
                    os.remove(p)
        try:
            os.rmdir(self._dir)  # only when empty
        except OSError:
            pass


def _rle_to_json(rle: dict) -> dict:
    """A COCO RLE as json: bytes ``counts`` (pycocotools' output) become text, flagged."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        return {"size": list(rle["size"]), "counts": counts.decode("ascii"), "bytes": True}
    return {"size": list(rle["size"]), "counts": counts}


def _rle_from_json(d: dict) -> dict:
    counts = d["counts"].encode("ascii") if d.get("bytes") else d["counts"]
    return {"size": d["size"], "counts": counts}


# ---------------------------------------------------------------------------- results json
def _rows_json(dets: np.ndarray, rles: Optional[List[dict]], start: int, stop: int) -> bytes:
    """The rows ``start:stop`` as json objects separated by commas (no brackets)."""
    with gc_paused():  # a dict and a list per row: collections would take 2/3 of the time
        return _rows_json_unchecked(dets, rles, start, stop)


def _rows_json_unchecked(dets, rles, start, stop) -> bytes:
    d = dets[start:stop]
    ids = d[:, 0].astype(np.int64).tolist()
    cats = d[:, 6].astype(np.int64).tolist()
    boxes = d[:, 1:5].tolist()
    scores = d[:, 5].tolist()
    if rles is None:
        rows = [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(ids, cats, boxes, scores)
        ]
    else:
        rows = [
            {"image_id": i, "category_id": c, "bbox": b, "score": s, "segmentation": _rle_text(r)}
            for i, c, b, s, r in zip(ids, cats, boxes, scores, rles[start:stop])
        ]
    try:
        import orjson  # Rust; floats in shortest round-trip form (Ryu), ~10x the standard library
    except ImportError:
        return json.dumps(rows)[1:-1].encode("ascii")
    return orjson.dumps(rows)[1:-1]


def _rle_text(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def write_results_json(
    path: str, dets: np.ndarray, rles: Optional[List[dict]] = None, chunk: int = 200_000
) -> None:
    """Write a detection matrix ``(N, 7)`` ``[image_id, x, y, w, h, score, category_id]`` (+ RLEs) as
    Detectron2's results json, atomically (``path.part`` then rename).

    Floats are written in shortest round-trip form, so :func:`~.results_loading.load_results_json` gives back the very
    same float64 values. Writers, the first installed: ``polars`` (Rust, whole table at once, and it
    releases the GIL), ``orjson`` (Rust, one dict per row, in chunks of ``chunk`` rows), the standard
    library; polars and orjson write the same bytes, the standard library the same values (tested).
    The file does not depend on ``chunk``: it is the one :class:`JsonListWriter` (and so
    :class:`~.results_stream.ResultsStream`) writes for the same rows in any chunks.
    """
    if rles is not None and len(rles) != len(dets):
        raise ValueError(f"{len(rles)} masks for {len(dets)} detections")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 7)
    writer = JsonListWriter(tmp)
    try:
        step = len(dets) if writer.kind == "polars" else chunk  # polars: the whole table at once
        for start in range(0, len(dets), max(step, 1)):
            stop = min(start + step, len(dets))
            writer.append((dets[start:stop], None if rles is None else rles[start:stop]))
    finally:
        writer.close()
    os.replace(tmp, path)


def results_writer_kind() -> str:
    """Which writer formats the results json: ``"polars"``, ``"orjson"`` or ``"json"`` (stdlib)."""
    if _polars() is not None:
        return "polars"
    try:
        import orjson  # noqa: F401
    except ImportError:
        return "json"
    return "orjson"


def row_separator(kind: str) -> bytes:
    """The bytes between two rows: ``json.dumps`` of a list spells it ``", "``, the others ``","``."""
    return b", " if kind == "json" else b","


def write_all(f, data) -> None:
    """Write every byte of ``data`` to the unbuffered file ``f`` (a raw write may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


class JsonListWriter:
    """A json list written chunk by chunk into an unbuffered file ``path``: after every
    :meth:`append` the file is a complete list (``[...]``), so polars can write each chunk with its
    own brackets (off the GIL, straight to the file): the previous ``]`` is overwritten by the
    chunk's ``[``, which then becomes the separator. :meth:`close` writes ``[]`` when no row came.
    One writer thread at a time."""

    def __init__(self, path: str):
        self.kind = results_writer_kind()
        self._sep = row_separator(self.kind)
        self.rows = 0
        self._f = open(path, "wb", buffering=0)

    def append(self, rows) -> None:
        """Rows at the end of the list: ``(dets, rles)`` or what :func:`prepare_rows` made of them."""
        prepared = rows
        if self.kind == "polars" and isinstance(rows, tuple):
            prepared = _polars_frame(_polars(), *rows)
        n = prepared.height if self.kind == "polars" else len(prepared[0])
        if n == 0:
            return
        f = self._f
        if self.kind == "polars":
            if self.rows:
                end = f.seek(-1, os.SEEK_END)  # the "]" of the rows so far
                prepared.write_json(f)
                os.pwrite(f.fileno(), self._sep, end)  # the chunk's "[" -> ","
            else:
                prepared.write_json(f)
        else:
            dets, rles = prepared
            if self.rows:
                f.seek(-1, os.SEEK_END)
            write_all(f, self._sep if self.rows else b"[")
            write_all(f, _rows_json(dets, rles, 0, len(dets)))
            write_all(f, b"]")
        self.rows += n

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            if not self.rows:
                write_all(self._f, b"[]")
        finally:
            self._f.close()


def prepare_rows(dets: np.ndarray, rles: Optional[List[dict]]):
    """Rows for :meth:`JsonListWriter.append`, prepared by the caller: with polars its table (built
    while the caller holds the GIL anyway, not by a writer thread that would wait for it), else the
    rows themselves."""
    pl = _polars()
    return _polars_frame(pl, dets, rles) if pl is not None else (dets, rles)


def _rle_sizes(rles: List[dict]) -> np.ndarray:
    """``(n, 2)`` int64 ``size`` of the RLEs; one object shared by all (the encoder's one tuple per
    image size) is read once."""
    sizes = list(map(operator.itemgetter("size"), rles))
    if sizes and all(map(operator.is_, sizes, itertools.repeat(sizes[0]))):
        return np.tile(np.asarray(sizes[0], np.int64).reshape(1, 2), (len(sizes), 1))
    return np.array(sizes, np.int64).reshape(-1, 2)


def _rle_counts(pl, rles: List[dict]):
    """The RLEs' ``counts`` as a polars string column (bytes, as pycocotools gives them, decoded)."""
    counts = list(map(operator.itemgetter("counts"), rles))
    try:
        return pl.Series(counts, dtype=pl.String)
    except TypeError:  # bytes among them
        counts = [c.decode("ascii") if isinstance(c, bytes) else c for c in counts]
        return pl.Series(counts, dtype=pl.String)


def _polars_frame(pl, dets: np.ndarray, rles: Optional[List[dict]]):
    """The results json's rows as a polars table (columns from the matrix, no per-row objects except
    the RLE strings); ``bbox`` and ``size`` as fixed-size arrays, ``segmentation`` a struct."""
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 7)
    cols = {
        "image_id": dets[:, 0].astype(np.int64),
        "category_id": dets[:, 6].astype(np.int64),
        "bbox": pl.Series(np.ascontiguousarray(dets[:, 1:5]), dtype=pl.Array(pl.Float64, 4)),
        "score": np.ascontiguousarray(dets[:, 5]),
    }
    if rles is not None:
        seg = pl.DataFrame(
            {
                "size": pl.Series(_rle_sizes(rles), dtype=pl.Array(pl.Int64, 2)),
                "counts": _rle_counts(pl, rles),
            }
        )
        cols["segmentation"] = seg.to_struct()
    return pl.DataFrame(cols)


def _polars():
    """The ``polars`` module (the first-choice writer), or ``None`` when it is not installed."""
    try:
        import polars
    except ImportError:
        return None
    return polars


def preload_results_writer() -> None:
    """Import the results json's writer (polars, 0.2 s) in a daemon thread, so that it is loaded by
    the time :class:`BackgroundWrite` starts. The evaluators call this when built, before inference.
    Imported inside the writer thread at ``evaluate()``, polars had to wait for the GIL, which hotcoco
    holds while it matches, so the import and the write ran after the matching instead of beside it."""
    import threading

    threading.Thread(target=_polars, name="lt_results_json_import", daemon=True).start()


class BackgroundWrite:
    """:func:`write_results_json` in a thread, beside the evaluation; :meth:`wait` re-raises its error.
    hotcoco holds the GIL while matching; polars' writer releases it, so with polars the two run in
    parallel (orjson's only interleaves). A separate writer process was measured slower (its start-up
    and NumPy import, and hotcoco's threads competing for the cores)."""

    def __init__(self, path: str, dets: np.ndarray, rles: Optional[List[dict]] = None):
        import threading

        self.path = path
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(
            target=self._run, args=(path, dets, rles), name="lt_results_json", daemon=True
        )
        self._thread.start()

    def _run(self, path, dets, rles):
        try:
            write_results_json(path, dets, rles)
        except BaseException as e:  # re-raised in wait()
            self._error = e

    def wait(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.path
