"""Run several ``tools/train_net.py`` invocations in one process with a read-recording config and write
the lt_detectron keys each one read (test helper for ``tests/test_entry_points.py``).

    python -m tests._train_net_reads RUNS.json OUT.json   (from the repository root)

``RUNS.json``: ``{name: [train_net arguments]}``; ``OUT.json``: ``{name: [dotted keys read]}``. The
config ``tools/train_net.py`` loads is replaced by a recording copy (``lt_detectron.config_reads``),
so every read while it builds, trains and evaluates is recorded; nothing changes in the library.
"""

import json
import sys


def main(runs_json, out_json):
    from lt_detectron.config_reads import record_reads
    from lt_detectron.engine import defaults
    from tools import train_net

    load_config = defaults.load_config
    sinks = []

    def recording_load_config(args):
        cfg, sink = record_reads(load_config(args))
        sinks.append(sink)
        return cfg

    defaults.load_config = recording_load_config  # read by the launcher and by setup
    with open(runs_json) as f:
        runs = json.load(f)
    out = {}
    for name, argv in runs.items():
        sinks.clear()
        defaults.launch_from_args(train_net.argument_parser().parse_args(argv), train_net.main)
        out[name] = sorted(set().union(*sinks))
    with open(out_json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
