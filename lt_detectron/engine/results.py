"""The LVIS-style result table printed at the end of training/evaluation."""

__all__ = ["format_results"]

COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _columns(rows):
    """The standard metrics present in any row, then the group metrics (AP[lo,hi), AP1..AP4)."""
    present = set().union(*(m.keys() for m in rows))
    cols = [c for c in COLUMNS if c in present]
    groups = sorted(
        k
        for k in present
        if k.startswith("AP") and k not in COLUMNS and ("[" in k or k[2:].isdigit())
    )
    groups.sort(
        key=lambda k: (k[:3] != "AP[", float(k[3:].split(",")[0]) if k.startswith("AP[") else k)
    )
    return cols + groups


def format_results(results) -> str:
    """A markdown table (one row per dataset and task) from ``{dataset: {task: {metric: value}}}``.

    Also accepts a single dataset's ``{task: {metric: value}}``. Missing metrics print ``-``;
    NaN (e.g. APr with no rare class in the split) prints ``nan``.
    """
    if not results:
        return ""
    if all(
        isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())
        for v in results.values()
    ):
        results = {"": results}
    entries = [
        (dataset, task, metrics)
        for dataset, per_task in results.items()
        if isinstance(per_task, dict)
        for task, metrics in per_task.items()
        if isinstance(metrics, dict)
    ]
    if not entries:
        return ""
    cols = _columns([m for _, _, m in entries])
    rows = [
        "| %s | %s | %s |"
        % (d, t, " | ".join("-" if m.get(c) is None else "%.2f" % m[c] for c in cols))
        for d, t, m in entries
    ]
    head = "| dataset | task | %s |" % " | ".join(cols)
    sep = "|" + "---|" * (len(cols) + 2)
    return "\n".join([head, sep] + rows)
