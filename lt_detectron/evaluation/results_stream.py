"""Detectron2's results json written while inference runs, not after it.

At ``evaluate()`` the two cores of a small machine are taken by the matching (hotcoco, which holds
the GIL); formatting 1.5 M rows of json (1 CPU s with polars at 5,000 LVIS images) beside it made
the end-to-end evaluation twice the matching. :class:`ResultsStream` moves that formatting to
``process()`` time, when the CPU waits for the model: the evaluator hands it each image's rows, and
every ``chunk_rows`` rows a writer thread formats them (polars releases the GIL) onto the end of
the file being built. ``evaluate()`` only formats the tail. The bytes are those of
:func:`~.predictions.write_results_json` for the same rows (:class:`~.predictions.JsonListWriter`
writes both).

In a distributed run each rank streams its rows to its own part in the per-rank folder
(:meth:`~.predictions.RankPredictionStore.results_part`), so the formatting is split over the
ranks, and rank 0 joins the parts in rank order (:func:`join_results_parts`, a copy in the kernel),
the order in which it evaluates the rows.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable, List, Optional, Sequence

import numpy as np

from .predictions import (
    JsonListWriter,
    prepare_rows,
    results_writer_kind,
    row_separator,
    write_all,
)

__all__ = ["ResultsStream", "join_results_parts", "ResultsWriteError", "CHUNK_ROWS"]

CHUNK_ROWS = 50_000  # rows per chunk: 2.8 MB of boxes, ~7 MB of json


class ResultsWriteError(RuntimeError):
    """The results json could not be written; the message names the file and the fix."""


class ResultsStream:
    """Build the json list ``path`` from rows handed over as they come (:meth:`add`), in a writer
    thread, into ``path.part``; renamed to ``path`` when complete (:meth:`finish`, then
    :meth:`wait`), so an older file at ``path`` is replaced only by a complete one. :meth:`abort`
    removes the partial file. A writer error is kept and raised by :meth:`wait`, naming ``target``
    (the results json the user asked for; ``path`` itself by default)."""

    def __init__(self, path: str, target: Optional[str] = None, chunk_rows: Optional[int] = None):
        self.path = path
        self.target = target or path
        self._tmp = path + ".part"
        self._chunk_rows = int(chunk_rows or CHUNK_ROWS)
        self._dets: List[np.ndarray] = []
        self._rles: List[dict] = []
        self._masks: Optional[bool] = None  # whether rows carry RLEs (set by the first add)
        self._pending = 0
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._error: Optional[BaseException] = None
        self._aborted = False
        self._finished = False
        self._writer: Optional[JsonListWriter] = None
        self._thread = threading.Thread(target=self._run, name="lt_results_stream", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side
    def add(self, dets: np.ndarray, rles: Optional[List[dict]] = None) -> None:
        """Rows ``(n, 7)`` of the detection matrix (+ their RLEs), in file order."""
        if self._finished:
            raise RuntimeError(f"rows added to the finished results stream {self.path}")
        if self._masks is None:
            self._masks = rles is not None
        if len(dets) == 0:
            return
        self._dets.append(dets)
        if self._masks:
            self._rles.extend(rles)
        self._pending += len(dets)
        if self._pending >= self._chunk_rows:
            self._queue.put(("rows", self._take()))

    def _take(self):
        dets = np.concatenate(self._dets, 0) if self._dets else np.zeros((0, 7))
        rles = self._rles if self._masks else None
        self._dets, self._rles, self._pending = [], [], 0
        return dets, rles

    def finish(self) -> None:
        """Hand over the tail and close the file (renamed to ``path`` once written); returns at
        once. With polars the tail's table is built here, in the caller: in the writer thread it
        would wait for the GIL behind the evaluation that follows."""
        if self._finished:
            return
        self._finished = True
        dets, rles = self._take()
        try:
            tail = ("rows", prepare_rows(dets, rles)) if len(dets) else None
        except Exception:  # the writer meets it again and reports it, naming the file
            tail = ("rows", (dets, rles))
        if tail is not None:
            self._queue.put(tail)
        self._queue.put(("close", None))

    def then(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` in the writer thread after what is queued (its error goes to
        :meth:`wait` too); e.g. rank 0 joins the ranks' parts once its own is written."""
        self._queue.put(("call", (fn, args)))

    def wait(self) -> str:
        """Wait for the writer; the complete file's path, or :class:`ResultsWriteError`."""
        self._stop()
        if self._error is not None:
            e = self._error
            raise ResultsWriteError(
                f"Could not write the results json {self.target}: {type(e).__name__}: {e}. Check "
                "that OUTPUT_DIR is writable and has room, or set TEST.LT.SAVE_RESULTS False."
            ) from e
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the partial file (an older complete ``path`` stays)."""
        self._aborted = True
        self._stop()
        if os.path.isfile(self._tmp):
            os.remove(self._tmp)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(("stop", None))
            self._thread.join()

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            kind, payload = self._queue.get()
            if kind == "stop":
                break
            if self._aborted or self._error is not None:
                continue  # drain until stopped
            try:
                self._do(kind, payload)
            except BaseException as e:  # raised by wait()
                self._error = e
        if self._writer is not None:
            self._writer.close()

    def _do(self, kind, payload) -> None:
        if kind == "call":
            fn, args = payload
            fn(*args)
            return
        if self._writer is None:
            os.makedirs(os.path.dirname(os.path.abspath(self._tmp)), exist_ok=True)
            self._writer = JsonListWriter(self._tmp)
        if kind == "rows":
            self._writer.append(payload)
        elif kind == "close":
            self._writer.close()
            os.replace(self._tmp, self.path)


def join_results_parts(parts: Sequence[str], path: str, remove: bool = True) -> str:
    """Join json lists (the ranks' parts, in order) into the one list ``path``, byte for byte what
    one writer would have written for all their rows; through ``path.part``, then renamed. The
    parts are copied by the kernel (``os.copy_file_range``) and, with ``remove``, deleted (and
    their folder, once empty)."""
    sep = row_separator(results_writer_kind())
    tmp = path + ".part"
    with open(tmp, "wb", buffering=0) as out:
        write_all(out, b"[")
        first = True
        for part in parts:
            if not os.path.isfile(part):
                raise FileNotFoundError(
                    f"{part} (one rank's rows of the results json) is missing: see that rank's "
                    "log; in multi-machine runs OUTPUT_DIR must be on a file system all ranks share"
                )
            size = os.path.getsize(part)
            if size <= 2:  # "[]"
                continue
            if not first:
                write_all(out, sep)
            with open(part, "rb", buffering=0) as src:
                _copy(src, out, 1, size - 2)  # without its brackets
            first = False
        write_all(out, b"]")
    os.replace(tmp, path)
    if remove:
        for part in parts:
            os.remove(part)
        try:
            os.rmdir(os.path.dirname(os.path.abspath(parts[0])))  # only when empty
        except (OSError, IndexError):
            pass
    return path


def _copy(src, dst, offset: int, count: int) -> None:
    """``count`` bytes of ``src`` from ``offset`` to ``dst``'s position: in the kernel where the
    file systems allow it, else through a buffer."""
    try:
        while count > 0:
            n = os.copy_file_range(src.fileno(), dst.fileno(), count, offset)
            if n == 0:
                raise EOFError(f"{src.name} is shorter than its size")
            offset, count = offset + n, count - n
        return
    except (AttributeError, OSError):  # no copy_file_range (not Linux, or across file systems)
        pass
    while count > 0:
        block = os.pread(src.fileno(), min(count, 1 << 24), offset)
        if not block:
            raise EOFError(f"{src.name} is shorter than its size")
        write_all(dst, block)
        offset, count = offset + len(block), count - len(block)
