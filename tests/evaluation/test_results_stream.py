"""The results json streamed during process() (lt_detectron.evaluation.results_stream): the bytes of
write_results_json for the same rows (polars, orjson, the standard library; boxes and masks; chunk
boundaries inside the data) against json/orjson/polars writing the whole list at once; partial files,
writer errors, the earlier results file; a faked 2- and 3-rank run joined in rank order; Fixed AP and
evaluate_arrays still written at evaluate()."""

import json
import os
import sys
import threading
import uuid

import numpy as np
import pytest

from lt_detectron.evaluation import LTLVISEvaluator, load_results_json, write_results_json
from lt_detectron.evaluation import results_stream as rs
from lt_detectron.evaluation.results_stream import (
    ResultsStream,
    ResultsWriteError,
    join_results_parts,
)
from lt_detectron.utils.testing import (
    detections_to_instances,
    make_detections,
    make_lvis_like_gt,
)
from tests._data import IMAGE_SIZE, eval_categories

WRITERS = ("polars", "orjson", "stdlib")


def _use_writer(monkeypatch, writer):
    """Make the chosen writer the first installed one (a None module makes its import fail)."""
    if writer == "polars":
        pytest.importorskip("polars")
    else:
        monkeypatch.setitem(sys.modules, "polars", None)
    if writer == "stdlib":
        monkeypatch.setitem(sys.modules, "orjson", None)
    else:
        pytest.importorskip("orjson")


def _rows(n, seed=0, shared=False):
    """``shared``: every RLE holds the one size tuple and text counts, as the ROI mask encoder gives
    them (the writer reads that size once); else a list per RLE and bytes or text counts."""
    rng = np.random.default_rng(seed)
    dets = np.zeros((n, 7))
    dets[:, 0] = rng.integers(1, 2**40, n)
    dets[:, 1:5] = rng.random((n, 4)) * 1000
    dets[:, 1] = np.where(np.arange(n) % 5 == 0, 1e-7, dets[:, 1])  # exponent notation
    dets[:, 5] = rng.random(n).astype(np.float32)
    dets[:, 6] = rng.integers(1, 1204, n)
    rles = [
        {"size": [48, 64], "counts": (f'0\\\\"x{i}'.encode("ascii") if i % 2 else f"ab{i}")}
        for i in range(n)
    ]  # pycocotools' bytes and text counts, backslashes and quotes
    if shared:
        size = (480, 640)
        rles = [{"size": size, "counts": f'0\\"y{i}'} for i in range(n)]
    return dets, rles


def _reference_bytes(writer, dets, rles):
    """The whole list written at once by the library itself (not through lt_detectron)."""
    rows = []
    for i, d in enumerate(dets.tolist()):
        row = {"image_id": int(d[0]), "category_id": int(d[6]), "bbox": d[1:5], "score": d[5]}
        if rles is not None:
            c = rles[i]["counts"]
            row["segmentation"] = {
                "size": list(rles[i]["size"]),
                "counts": c.decode() if isinstance(c, bytes) else c,
            }
        rows.append(row)
    if writer == "stdlib":
        return json.dumps(rows).encode()
    if writer == "orjson":
        import orjson

        return orjson.dumps(rows)
    import io

    import polars as pl

    cols = {
        "image_id": pl.Series([r["image_id"] for r in rows], dtype=pl.Int64),
        "category_id": pl.Series([r["category_id"] for r in rows], dtype=pl.Int64),
        "bbox": pl.Series([r["bbox"] for r in rows], dtype=pl.Array(pl.Float64, 4)),
        "score": pl.Series([r["score"] for r in rows], dtype=pl.Float64),
    }
    if rles is not None:
        cols["segmentation"] = pl.Series([r["segmentation"] for r in rows])
    buf = io.BytesIO()
    pl.DataFrame(cols).write_json(buf)
    return buf.getvalue()


def _stream(path, dets, rles, chunk_rows, step):
    s = ResultsStream(str(path), chunk_rows=chunk_rows)
    for a in range(0, len(dets), step):
        s.add(dets[a : a + step], None if rles is None else rles[a : a + step])
    s.finish()
    return s.wait()


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("what", ["boxes", "masks", "masks_shared_size", "empty"])
def test_stream_the_results_json_during_process_same_bytes(tmp_path, monkeypatch, writer, what):
    """Streamed in chunks of 70 rows from images of 33 (boundaries inside the data) = what
    write_results_json writes (chunks of 200,000 with orjson/stdlib, one table with polars) = the
    whole list written at once by the writer library."""
    _use_writer(monkeypatch, writer)
    dets, rles = _rows(0 if what == "empty" else 1000, shared=what == "masks_shared_size")
    rles = rles if what.startswith("masks") else None
    streamed = open(_stream(tmp_path / "s.json", dets, rles, 70, 33), "rb").read()
    write_results_json(str(tmp_path / "w.json"), dets, rles)
    assert streamed == open(tmp_path / "w.json", "rb").read()
    assert streamed == _reference_bytes(writer, dets, rles)
    assert not os.path.exists(tmp_path / "s.json.part")


def test_stream_formats_chunks_before_finish_and_replaces_the_old_file_when_complete(tmp_path):
    """Chunks are formatted as they fill, before finish(): the partial file then holds the json of
    the full chunks; the earlier results file is untouched until the stream is complete."""
    dets, rles = _rows(250)
    path = tmp_path / "r.json"
    path.write_bytes(b"OLD")
    s = ResultsStream(str(path), chunk_rows=100)
    s.add(dets[:120])  # a chunk of 120
    s.add(dets[120:250])  # a chunk of 130
    seen = []
    s.then(lambda: seen.append((open(str(path) + ".part", "rb").read(), path.read_bytes())))
    s.finish()
    s.wait()
    write_results_json(str(tmp_path / "w.json"), dets)
    assert seen == [(open(tmp_path / "w.json", "rb").read(), b"OLD")]
    assert path.read_bytes() == seen[0][0]


def test_stream_abort_discards_the_partial_file(tmp_path):
    dets, _ = _rows(300)
    path = tmp_path / "r.json"
    path.write_bytes(b"OLD")
    s = ResultsStream(str(path), chunk_rows=100)
    s.add(dets)
    seen, written = [], threading.Event()
    s.then(lambda: (seen.append(os.path.getsize(str(path) + ".part")), written.set()))
    written.wait(60)  # the chunk is on disk
    s.abort()
    assert seen and seen[0] > 0  # it had been written
    assert not os.path.exists(str(path) + ".part") and path.read_bytes() == b"OLD"


@pytest.mark.parametrize("writer", WRITERS)
def test_join_results_parts_in_order(tmp_path, monkeypatch, writer):
    """Parts (empty ones included) joined = one list of all their rows, in the parts' order."""
    _use_writer(monkeypatch, writer)
    dets, rles = _rows(300, seed=1)
    cuts = [(0, 0), (0, 120), (120, 120), (120, 300), (300, 300)]
    parts = [
        _stream(tmp_path / "p" / f"{i}.json", dets[a:b], rles[a:b], 50, 17)
        for i, (a, b) in enumerate(cuts)
    ]
    out = join_results_parts(parts, str(tmp_path / "all.json"))
    assert open(out, "rb").read() == _reference_bytes(writer, dets, rles)
    assert not (tmp_path / "p").exists()  # parts and their folder removed
    assert open(join_results_parts([], str(tmp_path / "none.json")), "rb").read() == b"[]"


# ---------------------------------------------------------------- the evaluator
@pytest.fixture
def data(tmp_path):
    from detectron2.data import MetadataCatalog

    gt = make_lvis_like_gt(10, eval_categories(), seed=4, image_size=IMAGE_SIZE, with_masks=True)
    dets = make_detections(gt, 37, seed=5, with_masks=True)  # 37 per image: under the cap
    name = f"lt_test_stream_{uuid.uuid4().hex[:8]}"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ids = sorted(c["id"] for c in gt["categories"])
    id_map = {d: i for i, d in enumerate(ids)}
    MetadataCatalog.get(name).set(
        json_file=str(tmp_path / "gt.json"), thing_dataset_id_to_contiguous_id=id_map
    )
    yield name, dets, id_map
    MetadataCatalog.remove(name)


def _matrix(dets, image_ids):
    """The evaluator's rows, re-derived: XYWH from the float32 XYXY boxes, in image order."""
    rows = []
    for k in image_ids:
        d = dets[k]
        m = np.empty((len(d["scores"]), 7))
        b = d["boxes"].copy()
        b[:, 2:] -= b[:, :2]
        m[:, 0], m[:, 1:5], m[:, 5], m[:, 6] = k, b, d["scores"], d["category_ids"]
        rows.append(m)
    return np.concatenate(rows)


def _process(ev, dets, image_ids, id_map, masks):
    for k in image_ids:
        inst = detections_to_instances(dets[k], IMAGE_SIZE, id_map, masks)
        ev.process([{"image_id": k}], [{"instances": inst}])


def _expected(tmp_path, dets, image_ids, masks):
    rles = [m for k in image_ids for m in dets[k]["masks"]] if masks else None
    write_results_json(str(tmp_path / "expected.json"), _matrix(dets, image_ids), rles)
    return open(tmp_path / "expected.json", "rb").read()


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_evaluator_streams_the_results_json(tmp_path, monkeypatch, data, task):
    """Chunks of 100 rows (images of 37): the file = write_results_json of the evaluated rows; an
    earlier file is replaced; a second evaluate() leaves it as it is."""
    name, dets, id_map = data
    monkeypatch.setattr(rs, "CHUNK_ROWS", 100)
    out = tmp_path / "out"
    out.mkdir()
    (out / "lvis_instances_results.json").write_bytes(b"OLD")
    ev = LTLVISEvaluator(name, (task,), distributed=False, output_dir=str(out))
    ids = sorted(dets)
    _process(ev, dets, ids, id_map, task == "segm")
    assert ev._results_stream() is not None
    first = ev.evaluate()
    assert (out / "lvis_instances_results.json").read_bytes() == _expected(
        tmp_path, dets, ids, task == "segm"
    )
    assert not (out / "lvis_instances_results.json.part").exists()
    os.remove(out / "lvis_instances_results.json")
    again = ev.evaluate()
    assert json.dumps(again) == json.dumps(first)  # (nan spelt NaN)
    assert not (out / "lvis_instances_results.json").exists()


def test_evaluator_reset_discards_the_partial_file(tmp_path, monkeypatch, data):
    """Rows processed before reset() are in no file; the earlier results file stays until the
    evaluation after reset() writes its own rows."""
    name, dets, id_map = data
    monkeypatch.setattr(rs, "CHUNK_ROWS", 50)
    out = tmp_path / "out"
    out.mkdir()
    (out / "lvis_instances_results.json").write_bytes(b"OLD")
    ev = LTLVISEvaluator(name, ("bbox",), distributed=False, output_dir=str(out))
    ids = sorted(dets)
    _process(ev, dets, ids[:6], id_map, False)
    ev.reset()
    assert sorted(os.listdir(out)) == ["lvis_instances_results.json"]
    assert (out / "lvis_instances_results.json").read_bytes() == b"OLD"
    _process(ev, dets, ids[6:], id_map, False)
    ev.evaluate()
    assert (out / "lvis_instances_results.json").read_bytes() == _expected(
        tmp_path, dets, ids[6:], False
    )


def test_evaluator_writer_error_names_the_file(tmp_path, data):
    name, dets, id_map = data
    out = tmp_path / "out"
    (out / "lvis_instances_results.json.part").mkdir(parents=True)  # the file cannot be opened
    (out / "lvis_instances_results.json").write_bytes(b"OLD")
    ev = LTLVISEvaluator(name, ("bbox",), distributed=False, output_dir=str(out))
    _process(ev, dets, sorted(dets), id_map, False)
    with pytest.raises(ResultsWriteError, match="lvis_instances_results.json.*SAVE_RESULTS"):
        ev.evaluate()
    assert (out / "lvis_instances_results.json").read_bytes() == b"OLD"


def _fake_rank(monkeypatch, rank, world):
    from detectron2.utils import comm

    monkeypatch.setattr(comm, "get_world_size", lambda: world)
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "is_main_process", lambda: rank == 0)
    monkeypatch.setattr(comm, "synchronize", lambda: None)


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_ranks_stream_parts_joined_in_rank_order(tmp_path, monkeypatch, data, world):
    """Ranks run one after the other (faked comm, barriers no-ops; rank 0 last, once the others'
    files are complete): each rank streams its own part, rank 0 joins them in rank order, the order
    of the rows it evaluates; with 3 ranks the last has no image (an empty part)."""
    name, dets, id_map = data
    monkeypatch.setattr(rs, "CHUNK_ROWS", 60)
    out = tmp_path / "out"
    ids = sorted(dets)
    shards = [ids[r::2] if r < 2 else [] for r in range(world)]
    results = {}
    for rank in list(range(1, world)) + [0]:
        with monkeypatch.context() as m:
            _fake_rank(m, rank, world)
            ev = LTLVISEvaluator(name, ("segm",), distributed=True, output_dir=str(out))
            _process(ev, dets, shards[rank], id_map, True)
            results[rank] = ev.evaluate()
    assert all(results[r] == {} for r in range(1, world)) and results[0]
    in_rank_order = [k for s in shards for k in s]
    assert (out / "lvis_instances_results.json").read_bytes() == _expected(
        tmp_path, dets, in_rank_order, True
    )
    left = os.listdir(out)
    assert "lt_predictions" not in left and not [f for f in left if f.endswith(".part")], left


def test_fixed_ap_and_evaluate_arrays_write_at_evaluate(tmp_path, data):
    """Fixed AP (rows pruned at the end) and evaluate_arrays are not streamed; their file is
    write_results_json of the rows evaluated."""
    name, dets, id_map = data
    ids = sorted(dets)
    fixed = LTLVISEvaluator(
        name, ("bbox",), distributed=False, output_dir=str(tmp_path / "f"), ap_protocol="fixed"
    )
    _process(fixed, dets, ids, id_map, False)
    assert fixed._results_stream() is None
    fixed.evaluate()
    # the top 10,000 per class keep every row here, in Fixed AP's order (by class)
    back = load_results_json(str(tmp_path / "f" / "lvis_instances_results.json"))[0]
    write_results_json(str(tmp_path / "f.json"), back)
    assert (tmp_path / "f" / "lvis_instances_results.json").read_bytes() == (
        tmp_path / "f.json"
    ).read_bytes()
    want = _matrix(dets, ids)
    assert np.array_equal(back[np.lexsort(back.T[::-1])], want[np.lexsort(want.T[::-1])])
    arrays = LTLVISEvaluator(name, ("bbox",), distributed=False, output_dir=str(tmp_path / "a"))
    arrays.evaluate_arrays(_matrix(dets, ids))
    assert arrays._results_stream() is None
    assert (tmp_path / "a" / "lvis_instances_results.json").read_bytes() == _expected(
        tmp_path, dets, ids, False
    )
