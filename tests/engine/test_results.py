"""The result table printed at the end of train_net."""

from lt_detectron.engine.results import format_results


def test_lvis_table_orders_standard_then_group_metrics():
    res = {
        "val": {
            "bbox": {
                "AP": 12.345,
                "APr": float("nan"),
                "AP50": 20.0,
                "AP[10,100)": 5.0,
                "AP[0,10)": 1.0,
                "AR@300": 9.0,
            }
        }
    }
    lines = format_results(res).splitlines()
    assert lines[0] == "| dataset | task | AP | AP50 | APr | AP[0,10) | AP[10,100) |"
    assert lines[2] == "| val | bbox | 12.35 | 20.00 | nan | 1.00 | 5.00 |"


def test_coco_lt_table_and_missing_metrics():
    res = {
        "a": {"bbox": {"AP": 1.0, "AP1": 2.0, "AP2": 3.0, "AP-person": 7.0}},
        "b": {"bbox": {"AP": 4.0}},
    }
    lines = format_results(res).splitlines()
    assert lines[0] == "| dataset | task | AP | AP1 | AP2 |"
    assert lines[3] == "| b | bbox | 4.00 | - | - |"


def test_single_dataset_results_and_empty():
    assert format_results({}) == ""
    assert format_results({"bbox": {"AP": 1.0}}).splitlines()[2] == "|  | bbox | 1.00 |"
