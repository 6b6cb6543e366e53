#!/usr/bin/env python
"""Time one full training step (forward + backward + optimizer step) per method, relative to the baseline.

Every method trains on the SAME fixed batch (read once from the embedded dataset's train loader), with the
model, optimizer (incl. gradient clipping) and LR of its config. Each method gets ``--warmup`` steps, then
``--steps`` timed steps run round-robin over the methods (so background load hits all methods alike); the
table reports the median ms/step and the ratio to the first method (the baseline, default ``softmax``).
The issue's goal for the ROI methods is <= 1.03x the softmax step.

    python -m benchmarks.benchmark_train_step                                  # every faster_rcnn_tiny_* method
    python -m benchmarks.benchmark_train_step --methods softmax,eqlv2,fcos_focal,centernet_bofl --steps 10

Method names: ``<m>`` -> configs/lt_shapes/faster_rcnn_tiny_<m>.yaml, ``fcos_<m>`` -> fcos_tiny_<m>.yaml,
``centernet_<m>`` -> centernet_tiny_<m>.yaml, ``retinanet_<m>`` -> retinanet_tiny_<m>.yaml, or a yaml path.
"""

import argparse
import copy
import glob
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "lt_shapes"
_FAMILIES = {"fcos": "fcos_tiny_", "centernet": "centernet_tiny_", "retinanet": "retinanet_tiny_"}


def config_for(method: str) -> str:
    """Config path of a method name (see the module docstring)."""
    if method.endswith(".yaml"):
        return method
    fam, _, rest = method.partition("_")
    if fam in _FAMILIES and rest:
        return str(CONFIG_DIR / (_FAMILIES[fam] + rest + ".yaml"))
    return str(CONFIG_DIR / ("faster_rcnn_tiny_%s.yaml" % method))


def default_methods():
    """Every faster_rcnn_tiny_* method except the decoupled ones (``*_decoupled``: they need a trained
    baseline), softmax first."""
    names = sorted(
        Path(p).stem[len("faster_rcnn_tiny_") :]
        for p in glob.glob(str(CONFIG_DIR / "faster_rcnn_tiny_*.yaml"))
    )
    names = [n for n in names if not n.endswith("_decoupled")]
    return ["softmax"] + [n for n in names if n != "softmax"] if "softmax" in names else names


def load_cfg(path, opts=()):
    from detectron2.config import get_cfg

    from lt_detectron import add_lt_config

    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu" if not torch.cuda.is_available() else cfg.MODEL.DEVICE
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def load_batch(cfg):
    """One training batch (list of dataset dicts with augmented images) from the config's train loader."""
    from detectron2.data import build_detection_train_loader

    return next(iter(build_detection_train_loader(cfg)))


class _Method:
    def __init__(self, name, cfg, batch):
        from detectron2.utils.events import EventStorage

        from lt_detectron.data.epochs import with_iters_per_epoch
        from lt_detectron.engine import LTTrainer

        torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
        self.name = name
        cfg = with_iters_per_epoch(cfg, None)  # BOFL's epoch length, as LTTrainer fills it
        self.model = LTTrainer.build_model(cfg)
        self.model.train()
        self.optimizer = LTTrainer.build_optimizer(cfg, self.model)
        self.batch = batch
        self.storage = EventStorage(0)
        self.times = []

    def step(self):
        with self.storage:
            t0 = time.perf_counter()
            loss_dict = self.model(copy.copy(self.batch))
            losses = sum(loss_dict.values())
            self.optimizer.zero_grad()
            losses.backward()
            self.optimizer.step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            self.storage.iter += 1
        if not torch.isfinite(losses):
            raise FloatingPointError("%s: loss is not finite" % self.name)
        return dt


def run(methods, steps=10, warmup=2, opts=()):
    """{method: median ms/step}; the first method is the baseline."""
    import lt_detectron  # noqa: F401  (registers heads, meta-architectures and datasets)

    cfgs = {m: load_cfg(config_for(m), opts) for m in methods}
    batch = load_batch(cfgs[methods[0]])
    runners = [_Method(m, cfgs[m], batch) for m in methods]
    for r in runners:
        for _ in range(warmup):
            r.step()
    for _ in range(steps):
        for r in runners:
            r.times.append(r.step())
    return {r.name: statistics.median(r.times) * 1e3 for r in runners}


def format_table(results):
    names = list(results)
    base = results[names[0]]
    lines = ["| method | ms/step | ratio to %s |" % names[0], "|---|---:|---:|"]
    for n in names:
        lines.append("| %s | %.1f | %.3fx |" % (n, results[n], results[n] / base))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated; first = baseline (default: softmax + every "
        "faster_rcnn_tiny_* except the *_decoupled ones)",
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps per method (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides for every method (KEY VALUE ...)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",") if args.methods else default_methods()
    for m in methods:
        if not os.path.isfile(config_for(m)):
            p.error("no config for method %r: %s" % (m, config_for(m)))
    results = run(methods, args.steps, args.warmup, args.opts)
    print(
        "train step on one fixed batch, threads=%d, torch %s, warm-up %d, median of %d steps (round-robin)"
        % (torch.get_num_threads(), torch.__version__, args.warmup, args.steps)
    )
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
