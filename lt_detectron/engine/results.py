"""The LVIS-style result table printed at the end of training/evaluation."""
__all__ = ["format_results"]

COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def format_results(results) -> str:
    """A markdown table (one row per dataset and task) from ``{dataset: {task: {metric: value}}}``.

    Also accepts a single dataset's ``{task: {metric: value}}``. Missing metrics print ``-``;
    NaN (e.g. APr with no rare class in the split) prints ``nan``.
    """
    if not results:
        return ""
    if all(isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()) for v in results.values()):
        results = {"": results}
    rows = []
    for dataset, per_task in results.items():
        if not isinstance(per_task, dict):
            continue
        for task, metrics in per_task.items():
            if not isinstance(metrics, dict):
                continue
            cells = []
            for c in COLUMNS:
                v = metrics.get(c)
                cells.append("-" if v is None else "%.2f" % v)
            rows.append("| %s | %s | %s |" % (dataset, task, " | ".join(cells)))
    if not rows:
        return ""
    head = "| dataset | task | %s |" % " | ".join(COLUMNS)
    sep = "|" + "---|" * (len(COLUMNS) + 2)
    return "\n".join([head, sep] + rows)
