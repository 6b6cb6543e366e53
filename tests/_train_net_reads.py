"""Run several ``tools/train_net.py`` invocations in one process with a read-recording config and write
the lt_detectron keys each one read (test helper for ``tests/test_entry_points.py``).

    python tests/_train_net_reads.py RUNS.json OUT.json

``RUNS.json``: ``{name: [train_net arguments]}``; ``OUT.json``: ``{name: [dotted keys read]}``. The
config ``tools/train_net.py`` loads is replaced by a recording copy (``lt_detectron.config_reads``),
so every read while it builds, trains and evaluates is recorded; nothing changes in the library.
"""

import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(runs_json, out_json):
    sys.path.insert(0, ROOT)
    from lt_detectron.config_reads import record_reads

    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(ROOT, "tools", "train_net.py")
    )
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    load_config = train_net.load_config
    sinks = []

    def recording_load_config(args):
        cfg, sink = record_reads(load_config(args))
        sinks.append(sink)
        return cfg

    train_net.load_config = recording_load_config
    with open(runs_json) as f:
        runs = json.load(f)
    out = {}
    for name, argv in runs.items():
        sinks.clear()
        train_net.launch_from_args(train_net.argument_parser().parse_args(argv))
        out[name] = sorted(set().union(*sinks))
    with open(out_json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
