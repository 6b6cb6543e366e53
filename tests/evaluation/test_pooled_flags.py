"""Pooled AP's flattened flags (lt_detectron/evaluation/pooled.py: match and ignore flags of all
records as one byte array, curves read from the true positives and ignored detections only) against
the loop-by-loop transcription of the authors' accumulation in test_pooled.py, on records with ties,
empty pools, classes without detections and images without annotations; and the errors of
malformed records."""

import numpy as np
import pytest

from lt_detectron.evaluation.pooled import (
    PooledRecords,
    pooled_ap,
    pooled_precision,
    stack_records,
)
from benchmarks.lvis_eval_pooled import authors_curves
from tests.evaluation.test_pooled import REC_THRS, T, _lvis_api_spelling, _naive_pooled

# band "r" has no category with records (an empty pool); category 6 ("f") is never detected;
# category 7 is in no band (only in "all")
FREQ = {2: "c", 3: "f", 4: "f", 5: "c", 6: "f", 7: ""}
NO_DETECTIONS = 6
NO_ANNOTATIONS = (3, 8)  # images with detections and no ground truth at all


def _edge_records(seed):
    """hotcoco-style records; scores on a coarse grid (ties within and across records), many rows
    of all-false match or ignore flags (records read by a scan only), records without detections
    (rows empty, or no rows at all), ignored detections matched and unmatched."""
    rng = np.random.default_rng(seed)
    out = []
    for img in range(1, 10):
        for cat in FREQ:
            if rng.random() < 0.25:
                continue
            d = 0 if cat == NO_DETECTIONS else int(rng.integers(0, 7))
            g = 0 if img in NO_ANNOTATIONS else int(rng.integers(0, 3))
            scores = sorted(np.round(rng.random(d) * 4) / 4, reverse=True)
            base = rng.random(d)
            hit = rng.random() < 0.6  # else no detection of the record is ever matched
            matched = [[bool(hit and base[j] > 0.2 + 0.07 * t) for j in range(d)] for t in range(T)]
            noisy = rng.random() < 0.3  # else nothing ignored
            ignore = [[bool(noisy and rng.random() < 0.4) for _ in range(d)] for _ in range(T)]
            rows = [] if d == 0 and rng.random() < 0.5 else None
            out.append(
                {
                    "image_id": img,
                    "category_id": cat,
                    "dtScores": [float(s) for s in scores],
                    "dtMatched": matched if rows is None else rows,
                    "dtIgnore": ignore if rows is None else rows,
                    "gtIgnore": [bool(rng.random() < 0.15) for _ in range(g)],
                }
            )
    return out


def _pools():
    bands = {b: {c for c, f in FREQ.items() if f == b} for b in "rcf"}
    return {"APpool": set(FREQ), **{f"APpool-{b}": cats for b, cats in bands.items()}}


def _lvis_api(r):
    out = dict(_lvis_api_spelling(r))
    if not r["dtScores"]:
        out["dt_matches"] = np.zeros((T, 0), np.int64)
        out["dt_ignore"] = np.zeros((T, 0), bool)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pooled_ap_flags_equal_authors_accumulation_on_edge_records(seed):
    records = _edge_records(seed)
    expected = {k: _naive_pooled(records, cats) for k, cats in _pools().items()}
    assert np.isnan(expected["APpool-r"])  # the empty pool
    assert not np.isnan(expected["APpool"]) and not np.isnan(expected["APpool-f"])
    assert any(r["category_id"] == NO_DETECTIONS and r["gtIgnore"] for r in records)
    as_ints = [
        {**r, "dtMatched": [[int(v) for v in row] for row in r["dtMatched"]]} for r in records
    ]
    for entries in (records, as_ints, [_lvis_api(r) for r in records]):
        got = pooled_ap(entries, FREQ, T, REC_THRS)
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-12, nan_ok=True), (seed, k, got[k], v)


def test_pooled_ap_flags_of_hotcoco_rows_equal_those_of_arrays():
    """The ``bytes`` path (hotcoco's lists) and the NumPy path (lvis-api's arrays) flatten the
    records alike, and the flags are what the records say, record by record, row by row."""
    records = _edge_records(4)
    a = stack_records(records, T)
    b = stack_records([_lvis_api(r) for r in records], T)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    expected = []
    for r in sorted(records, key=lambda r: (r["image_id"], r["category_id"])):
        for t in range(T if r["dtScores"] else 0):
            for m, i in zip(r["dtMatched"][t], r["dtIgnore"][t]):
                expected.append(int(m) + 2 * int(i))
    np.testing.assert_array_equal(a.flags, expected)


@pytest.mark.parametrize("n", [0, 1, 40])
def test_pooled_precision_equals_the_dense_curve(n):
    rng = np.random.default_rng(n)
    state = rng.integers(0, 3, (T, n))  # 0 false positive, 1 true positive, 2 ignored
    tp, fp = state == 1, state == 0
    num_gt = int(tp.sum(axis=1).max()) + 2
    got = pooled_precision(tp, fp, num_gt, REC_THRS)
    np.testing.assert_array_equal(got, authors_curves(tp, fp, num_gt, REC_THRS))
    assert (pooled_precision(tp, fp, 0, REC_THRS) == -1).all()


def test_pooled_ap_flags_reject_rows_that_do_not_match_the_scores():
    records = _edge_records(0)
    bad = next(r for r in records if len(r["dtScores"]) > 1)
    bad["dtMatched"] = [row[:-1] for row in bad["dtMatched"]]  # one flag short in every row
    with pytest.raises(ValueError, match="one row of flags per IoU threshold"):
        stack_records(records, T)
    bad["dtMatched"] = [[False] for _ in range(T)]  # ragged across records, 1 flag per row
    bad["dtIgnore"] = [row[:1] for row in bad["dtIgnore"]]
    with pytest.raises(ValueError, match="one row of flags per IoU threshold"):
        stack_records(records, T)


def test_pooled_ap_flags_reject_a_wrong_number_of_iou_thresholds():
    recs = stack_records(_edge_records(1), T)
    short = PooledRecords(*recs[:4], recs.flags[: -len(recs.scores)])  # flags for T - 1 rows
    with pytest.raises(ValueError, match="IoU thresholds"):
        pooled_ap(short, FREQ, T, REC_THRS)


def test_pooled_ap_flags_without_any_detection_or_record():
    records = [{**r, "dtScores": [], "dtMatched": [], "dtIgnore": []} for r in _edge_records(5)]
    expected = {k: _naive_pooled(records, cats) for k, cats in _pools().items()}
    assert expected["APpool"] == 0.0
    got = pooled_ap(records, FREQ, T, REC_THRS)
    assert got == pytest.approx(expected, abs=0, nan_ok=True)
    empty = pooled_ap([], FREQ, T, REC_THRS)
    assert list(empty) == list(expected) and all(np.isnan(v) for v in empty.values())
