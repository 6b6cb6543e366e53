"""The reproduction contract (issue 25 §4): every LVIS v1 / COCO-LT config against its recorded
official recipe (lt_detectron/config_recipes.py, recipes/recipes.yaml, tools/compare_recipes.py)."""

import os
import re

import pytest
import yaml

from lt_detectron.config_recipes import (
    FIELDS,
    RecipeError,
    compare_config,
    config_values,
    covered_configs,
    load_book,
    official_values,
)
from lt_detectron.utils.testing.config import lt_cfg

from tests._data import ROOT

BOOK = os.path.join(ROOT, "recipes", "recipes.yaml")
EQLV2 = "configs/lvis_v1/eqlv2_mask_rcnn_R_50_FPN_1x.yaml"


@pytest.fixture(scope="module")
def book():
    return load_book(BOOK)


def _tmp_repo(tmp_path, overrides, differences=None):
    """A repository root holding one LVIS config (the EQL v2 1x config plus ``overrides``) and a
    record book whose only record is the EQL v2 one (with ``differences``)."""
    real = load_book(BOOK)
    cfg_dir = tmp_path / "configs" / "lvis_v1"
    cfg_dir.mkdir(parents=True)
    body = {"_BASE_": os.path.join(ROOT, EQLV2)}
    body.update(overrides)
    (cfg_dir / "changed.yaml").write_text(yaml.safe_dump(body))
    rec = dict(real["configs"][EQLV2])
    rec["differences"] = differences or {}
    book = dict(real, configs={"configs/lvis_v1/changed.yaml": rec})
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "recipes.yaml").write_text(yaml.safe_dump(book))
    return str(tmp_path), load_book(str(tmp_path / "recipes" / "recipes.yaml"))


def test_every_lvis_and_coco_lt_config_has_a_record(book):
    covered = covered_configs(ROOT)
    assert EQLV2 in covered and "configs/dense/efl_retinanet_R_50_FPN_2x_lvis_v1.yaml" in covered
    assert not [c for c in covered if os.path.basename(c).startswith("Base-")]
    assert not [c for c in covered if "lt_shapes" in c or c.endswith("_coco.yaml")]
    missing = [c for c in covered if c not in book["configs"]]
    assert not missing, "configs without a record in recipes/recipes.yaml: %s" % missing
    dangling = [c for c in book["configs"] if not os.path.isfile(os.path.join(ROOT, c))]
    assert not dangling, "records of configs that do not exist: %s" % dangling
    # nothing here ran on real LVIS / COCO-LT: the book must not claim otherwise
    assert {str(r["reproduced_on_lvis"]).lower() for r in book["configs"].values()} <= {
        "no",
        "false",
    }


def test_each_recorded_field_comparison_runs(book):
    for name in covered_configs(ROOT):
        report = compare_config(ROOT, name, book)
        official = official_values(book, name)
        assert [row[0] for row in report.rows] == [f for f in FIELDS if f in official], name
        assert report.ok, report.problems
        for field, mine, theirs, status, reason in report.rows:
            assert status in ("same", "documented"), (name, field)
            assert (status == "documented") == bool(reason), (name, field)


def test_config_values_are_derived_from_the_merged_config(book):
    """The EQL v2 1x config, re-derived by hand: 75,128 iterations x 16 / 100,170 images."""
    v = config_values(lt_cfg(os.path.join(ROOT, EQLV2)), book["train_images"])
    assert v["epochs"] == pytest.approx(75128 * 16 / 100170)
    assert v["steps"] == pytest.approx([50085 * 16 / 100170, 68867 * 16 / 100170])
    assert (v["batch"], v["lr"], v["decay"], v["sampler"], v["repeat_threshold"]) == (
        16,
        0.02,
        "step",
        "random",
        None,
    )
    assert (v["loss"], v["clip"], v["score_thresh"], v["detections"]) == ("eqlv2", None, 1e-4, 300)
    ecm = config_values(
        lt_cfg(os.path.join(ROOT, "configs/lvis_v1/ecm_mask_rcnn_R_50_FPN_1x.yaml")),
        book["train_images"],
    )
    assert (ecm["sampler"], ecm["repeat_threshold"], ecm["clip"], ecm["classifier"]) == (
        "rfs",
        0.001,
        5.0,
        "cosine",
    )
    fcos = config_values(
        lt_cfg(os.path.join(ROOT, "configs/dense/focal_fcos_R_50_FPN_1x_coco_lt.yaml")),
        book["train_images"],
    )
    assert (fcos["decay"], fcos["steps"], fcos["epochs"]) == (
        "cosine",
        [],
        pytest.approx(6825 * 16 / 9100),
    )
    with pytest.raises(RecipeError, match="coco_2017_train.*train_images"):
        config_values(
            lt_cfg(os.path.join(ROOT, "configs/dense/focal_fcos_R_50_FPN_1x_coco.yaml")),
            book["train_images"],
        )


def test_known_differences_are_settled(book):
    """ECM 2x decays at epochs 20 / 22; BAGS runs at lr 0.01 with clipping 35 (documented);
    detectron2's LVIS "1x" is 180k x 16 images, about 28.75 epochs, not mmdetection's 12."""
    ecm2x = config_values(
        lt_cfg(os.path.join(ROOT, "configs/lvis_v1/ecm_mask_rcnn_R_50_FPN_2x.yaml")),
        book["train_images"],
    )
    assert ecm2x["steps"] == pytest.approx([20, 22], abs=1e-3) and ecm2x["epochs"] == pytest.approx(
        24
    )
    bags = compare_config(ROOT, "configs/lvis_v1/bags_mask_rcnn_R_50_FPN_decoupled.yaml", book)
    documented = {row[0]: (row[1], row[2]) for row in bags.rows if row[3] == "documented"}
    assert documented == {"lr": (0.01, 0.02), "clip": (35.0, None), "warmup_factor": (0.333, 0.001)}
    d2 = dict(book, configs={"x": {"recipe": "d2_lvis_v1_1x"}})
    assert official_values(d2, "x")["epochs"] == pytest.approx(180000 * 16 / 100170)
    assert official_values(d2, "x")["steps"] == pytest.approx(
        [120000 * 16 / 100170, 160000 * 16 / 100170]
    )


def test_undocumented_difference_fails(tmp_path):
    root, book = _tmp_repo(tmp_path, {"SOLVER": {"STEPS": [60000, 68867]}})
    report = compare_config(root, "configs/lvis_v1/changed.yaml", book)
    assert not report.ok
    (problem,) = report.problems
    assert (
        "configs/lvis_v1/changed.yaml" in problem
        and "steps" in problem
        and "differences" in problem
    )
    # documented, it passes
    root, book = _tmp_repo(
        tmp_path / "doc", {"SOLVER": {"STEPS": [60000, 68867]}}, {"steps": "a reason"}
    )
    assert compare_config(root, "configs/lvis_v1/changed.yaml", book).ok
    # a reason for a field that does not differ is stale and fails too
    root, book = _tmp_repo(tmp_path / "stale", {}, {"lr": "no longer true"})
    (problem,) = compare_config(root, "configs/lvis_v1/changed.yaml", book).problems
    assert "lr" in problem and "remove" in problem


def test_missing_record_names_the_config_and_the_book(book):
    with pytest.raises(RecipeError) as e:
        compare_config(ROOT, "configs/lvis_v1/new_method_1x.yaml", book, "recipes/recipes.yaml")
    assert "configs/lvis_v1/new_method_1x.yaml" in str(e.value) and "recipes/recipes.yaml" in str(
        e.value
    )


def test_load_book_rejects_unknown_fields_and_recipes(tmp_path):
    real = load_book(BOOK)
    for rec, match in [
        ({"recipe": "eqlv2_1x_random", "differences": {"learning_rate": "x"}}, "learning_rate"),
        ({"recipe": "no_such_recipe"}, "no_such_recipe"),
        ({"recipe": "eqlv2_1x_random", "expected": [{"result": "30 AP"}]}, "its source"),
        ({"recipe": "eqlv2_1x_random"}, "note saying why"),
    ]:
        p = tmp_path / "book.yaml"
        p.write_text(yaml.safe_dump(dict(real, configs={"configs/a.yaml": rec})))
        with pytest.raises(RecipeError, match=match):
            load_book(str(p))


def test_tool_prints_a_table(capsys, tmp_path):
    from tools.compare_recipes import main

    assert main(["configs/lvis_v1/bags_mask_rcnn_R_50_FPN_decoupled.yaml", "--root", ROOT]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+field\s+config\s+official\s+status\s+reason", out, re.M)
    assert re.search(r"^\s+clip\s+35\s+none\s+documented\s+35, the BAGS", out, re.M)
    assert (
        "reproduced on LVIS here: no" in out
        and "1 configs, 3 documented differences, 0 problems" in out
    )
    root, _ = _tmp_repo(tmp_path, {"SOLVER": {"BASE_LR": 0.04}})
    assert main(["--root", root]) == 1
    out = capsys.readouterr().out
    assert "UNDOCUMENTED" in out and "PROBLEM: configs/lvis_v1/changed.yaml: lr is 0.04" in out


def test_readme_method_table_has_reproduced_on_lvis_column():
    text = open(os.path.join(ROOT, "README.md")).read()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header = next(line for line in table if line.startswith("| method |"))
    col = [c.strip() for c in header.strip("|").split("|")].index("reproduced on LVIS here")
    rows = table[
        table.index(header) + 1 : table.index(header) + 9
    ]  # (the |---| line is not in table)
    assert [r.strip("|").split("|")[col].strip() for r in rows] == ["no"] * 8
    assert "dev/gpu_check.sh" in text
