"""One run of ``dev/check_configs.py``: the ``tools/train_net.py --smoke`` command of a config
(``lt_detectron/config_smoke.py`` shrinks it; :data:`CHECK_OPTS`, the fixtures, the registration),
running it with its peak RSS, and reading its ``metrics.json``. See ``dev/check_configs.py``'s docstring."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")

# datasets named by the shipped configs -> (format, json relative to the fixture root, image root)
FIXTURE_DATASETS = {
    # detectron2's load_lvis_json concatenates image_root + "train2017": the trailing slash is needed
    "lvis_v1_train": ("lvis", "lvis/lvis_v1_train.json", "coco/"),
    "lvis_v1_val": ("lvis", "lvis/lvis_v1_val.json", "coco/"),
    "coco_lt_train": ("coco", "coco/annotations/coco_lt_train.json", "coco/train2017"),
    "coco_lt_val": ("coco", "coco/annotations/instances_val2017.json", "coco/val2017"),
    "coco_2017_train": ("coco", "coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_val": ("coco", "coco/annotations/instances_val2017.json", "coco/val2017"),
}

# what check_configs adds to train_net.py's --smoke (lt_detectron/config_smoke.py: the shrinking)
CHECK_OPTS = ["MODEL.DEVICE", "cpu"]


def build_command(config, cfg, fixtures, registration, out_dir, weights=None, iters=3):
    """argv and environment of one run."""
    opts = list(CHECK_OPTS) + ["SOLVER.MAX_ITER", str(iters), "OUTPUT_DIR", out_dir]
    w = cfg.MODEL.WEIGHTS
    if weights is not None:
        opts += ["MODEL.WEIGHTS", weights]
    elif w.startswith("detectron2://ImageNetPretrained/"):
        opts += ["MODEL.WEIGHTS", os.path.join(fixtures, "ImageNetPretrained", "MSRA", "R-50.pkl")]
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=fixtures,
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    train_argv = [TRAIN_NET, "--config-file", os.path.join(ROOT, config), "--smoke"]
    if registration == "detectron2":
        regs = []
        for key in ("TRAIN", "TEST"):
            names = []
            for n in getattr(cfg.DATASETS, key):
                if n not in FIXTURE_DATASETS:
                    raise KeyError(
                        "%s: dataset %r has no fixture (known: %s)"
                        % (config, n, ", ".join(FIXTURE_DATASETS))
                    )
                fmt, js, img = FIXTURE_DATASETS[n]
                new = "my_" + n
                regs.append((fmt, new, os.path.join(fixtures, js), os.path.join(fixtures, img)))
                names.append(new)
            opts += ["DATASETS." + key, "(%s,)" % ", ".join("'%s'" % x for x in names)]
        for fmt, name, js, img in regs:
            train_argv += ["--register-" + fmt, name, js, img]
    return [sys.executable] + train_argv + opts, env


def run_one(argv, env, log_path, timeout):
    """Run, wait with os.wait4 (this child's own peak RSS). Returns (rc, wall_s, peak_rss_mib)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        p = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        timer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux
    return p.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024.0


def read_metrics(out_dir):
    """(s/iter, last iteration, evaluated?) from detectron2's metrics.json."""
    path = os.path.join(out_dir, "metrics.json")
    s_iter, it, evaluated = None, None, False
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if "time" in rec:
                    s_iter, it = rec["time"], rec.get("iteration")
                if any(k.startswith(("bbox/", "segm/")) for k in rec):
                    evaluated = True
    return s_iter, it, evaluated


def tail(path, n=40):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])
