"""Pooled AP (lt_detectron/evaluation/pooled.py) against a naive, loop-by-loop transcription of the
authors' accumulation (Dave et al. 2021, large-vocab-devil ``LVISPooledEval.accumulate``) on random
per-image records, in both spellings (hotcoco's lists, lvis-api's arrays); and the area-"all"
re-evaluation that feeds it against hotcoco's full record set."""

import numpy as np
import pytest

from lt_detectron.evaluation.pooled import concat_records, pooled_ap, stack_records

T = 10
REC_THRS = np.linspace(0.0, 1.0, 101)
FREQ = {1: "r", 2: "c", 3: "f", 4: "f", 5: "c"}


def _random_records(seed, num_images=12):
    """hotcoco-style records: per (image, category) a few detections with quantized scores (ties
    across records), match / ignore flags per IoU threshold (matches only get rarer as the
    threshold rises), ground truth with some ignored; some records without detections or GT."""
    rng = np.random.default_rng(seed)
    out = []
    for img in range(1, num_images + 1):
        for cat in FREQ:
            if rng.random() < 0.3:
                continue
            d, g = int(rng.integers(0, 6)), int(rng.integers(0, 4))
            scores = sorted(np.round(rng.random(d), 1).tolist(), reverse=True)
            base = rng.random(d)
            matched = [[bool(base[j] > 0.3 + 0.06 * t) for j in range(d)] for t in range(T)]
            ignore = [[bool(not m and rng.random() < 0.15) for m in row] for row in matched]
            out.append(
                {
                    "image_id": img,
                    "category_id": cat,
                    "dtScores": scores,
                    "dtMatched": matched,
                    "dtIgnore": ignore,
                    "gtIgnore": [bool(rng.random() < 0.2) for _ in range(g)],
                }
            )
    return out


def _naive_pooled(records, cats):
    """One pool by hand: rank by score, ties in (image, category, listed) order; plain loops."""
    recs = [r for r in records if r["category_id"] in cats]
    num_gt = sum(1 for r in recs for ig in r["gtIgnore"] if not ig)
    if num_gt == 0:
        return float("nan")
    dets = []
    for r in recs:
        for j, s in enumerate(r["dtScores"]):
            dets.append(((-s, r["image_id"], r["category_id"], j), r, j))
    dets.sort(key=lambda x: x[0])
    total = 0.0
    for t in range(T):
        tp = fp = 0
        rc, pr = [], []
        for _, r, j in dets:
            if r["dtIgnore"][t][j]:
                pass
            elif r["dtMatched"][t][j]:
                tp += 1
            else:
                fp += 1
            rc.append(tp / num_gt)
            pr.append(tp / (fp + tp + np.spacing(1)))
        for i in range(len(pr) - 1, 0, -1):
            pr[i - 1] = max(pr[i - 1], pr[i])
        for thr in REC_THRS:
            k = next((i for i, v in enumerate(rc) if v >= thr), None)
            total += pr[k] if k is not None else 0.0
    return total / (T * len(REC_THRS))


def _lvis_api_spelling(r):
    return {
        "image_id": r["image_id"],
        "category_id": r["category_id"],
        "dt_scores": list(r["dtScores"]),
        "dt_matches": np.array(r["dtMatched"], np.int64).reshape(T, -1) * 7,  # match ids, 0 = none
        "dt_ignore": np.array(r["dtIgnore"], bool).reshape(T, -1),
        "gt_ignore": np.array(r["gtIgnore"], bool),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_ap_equals_authors_formula_on_random_records(seed):
    records = _random_records(seed)
    pools = {
        "APpool": set(FREQ),
        **{f"APpool-{b}": {c for c, f in FREQ.items() if f == b} for b in "rcf"},
    }
    expected = {k: _naive_pooled(records, cats) for k, cats in pools.items()}
    shuffled = [records[i] for i in np.random.default_rng(seed).permutation(len(records))]
    for entries in (records, shuffled + [None], [_lvis_api_spelling(r) for r in records]):
        got = pooled_ap(entries, FREQ, T, REC_THRS)
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-12, nan_ok=True), (k, got[k], v)
    assert not np.isnan(expected["APpool"])


def test_pooled_ap_of_a_pool_without_ground_truth_is_nan():
    records = [r for r in _random_records(3) if FREQ[r["category_id"]] != "r"]
    records.append(
        {
            "image_id": 1,
            "category_id": 1,
            "dtScores": [0.9],
            "dtMatched": [[False]] * T,
            "dtIgnore": [[False]] * T,
            "gtIgnore": [True],  # its only GT is ignored
        }
    )
    got = pooled_ap(records, FREQ, T, REC_THRS)
    assert np.isnan(got["APpool-r"]) and not np.isnan(got["APpool-f"])


def test_stack_records_rejects_a_wrong_number_of_iou_thresholds():
    with pytest.raises(ValueError, match="IoU thresholds"):
        stack_records(_random_records(0), T + 1)


def test_pooled_ap_area_all_reevaluation_equals_filtered_records():
    """The evaluator re-runs hotcoco's matching with area "all" only for pooled AP, chunk of images
    by chunk; the records it reads must give what the records of area "all" from the full
    four-range evaluation give."""
    hotcoco = pytest.importorskip("hotcoco")
    from lt_detectron.evaluation import evaluate_lvis_predictions
    from lt_detectron.evaluation.hotcoco_results import load_hotcoco, lvis_kept_results
    from lt_detectron.evaluation.lvis_evaluation import _area_all_eval_imgs
    from lt_detectron.utils.testing import make_detections, make_lvis_like_gt
    from tests._data import IMAGE_SIZE, eval_categories

    gt = make_lvis_like_gt(20, eval_categories(), seed=5, image_size=IMAGE_SIZE)
    per_image = make_detections(gt, 50, seed=6)
    dets = np.concatenate(
        [
            np.column_stack(
                [
                    np.full(len(d["scores"]), k),
                    d["boxes"][:, :2],
                    d["boxes"][:, 2:] - d["boxes"][:, :2],
                    d["scores"],
                    d["category_ids"],
                ]
            )
            for k, d in per_image.items()
        ]
    )
    metrics, _, _ = evaluate_lvis_predictions(gt, dets, None, "bbox", 300, "hotcoco", pooled=True)
    kept, _, _ = lvis_kept_results(dets, None, 300)
    G, D = load_hotcoco(gt, kept, None, None, lvis=True)
    E = hotcoco.COCOeval(G, D, "bbox", lvis_style=True)
    E.params.max_dets = [300]
    E.evaluate()
    all_rng = list(E.params.area_rng[0])
    assert len(E.params.area_rng) == 4
    entries = [e for e in E.eval_imgs if e is not None and list(e["aRng"]) == all_rng]
    freq = {int(c): G.cats[c]["frequency"] for c in G.cats}
    ref = pooled_ap(entries, freq, len(E.params.iou_thrs), np.asarray(E.params.rec_thrs))
    for k, v in ref.items():
        assert metrics[k] == pytest.approx(v, abs=0, nan_ok=True), k
    assert not np.isnan(ref["APpool"])
    # chunks of 7 images (the evaluator uses 1,000): the same records, in the same order
    chunks = [stack_records(c, len(E.params.iou_thrs)) for c in _area_all_eval_imgs(E, 7)]
    assert len(chunks) == 3
    whole = stack_records(entries, len(E.params.iou_thrs))
    joined = concat_records(chunks)
    for a, b in zip(joined, whole):
        np.testing.assert_array_equal(a, b)
    got = pooled_ap(joined, freq, len(E.params.iou_thrs), np.asarray(E.params.rec_thrs))
    assert got == pytest.approx(ref, abs=0, nan_ok=True)
