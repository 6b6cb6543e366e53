#!/usr/bin/env python
"""Convert a torchvision ResNet state dict (``.pth``) to detectron2's ``.pkl`` weights format.

    python tools/convert_torchvision_to_detectron2.py resnet50-0676ba61.pth R-50-torchvision.pkl

The output is ``{"model": {name: numpy array}, "__author__": "torchvision",
"matching_heuristics": True}``, the format of detectron2's model-zoo ``.pkl`` files: detectron2
loads it with ``MODEL.WEIGHTS R-50-torchvision.pkl`` and matches the names to the backbone
(``stem.*``, ``res2.*`` ... ``res5.*``) by its suffix heuristics. The classifier (``fc.*``) and
BatchNorm's ``num_batches_tracked`` counters are dropped.

ResNet-50/101/152, ResNeXt (``resnext50_32x4d``, ``resnext101_32x8d`` ...) and wide ResNets are
supported: the depth (``MODEL.RESNETS.DEPTH``), ``NUM_GROUPS`` and ``WIDTH_PER_GROUP`` are read from
the weights' shapes and printed with the other config changes; other block counts are refused.
torchvision's ResNet differs from detectron2's MSRA weights in two ways that the config must
follow (``CONFIG_FOR_TORCHVISION_WEIGHTS`` below, printed after a conversion):

* the stride-2 convolution of each bottleneck is the 3x3 (``RESNETS.STRIDE_IN_1X1 False``);
* it expects RGB input normalised by the ImageNet mean/std on a 0-1 scale, i.e. on detectron2's
  0-255 pixels ``INPUT.FORMAT RGB``, ``PIXEL_MEAN [123.675, 116.28, 103.53]``,
  ``PIXEL_STD [58.395, 57.12, 57.375]``.

BatchNorm statistics become detectron2's ``FrozenBN`` (``RESNETS.NORM FrozenBN``, the default).
The input is read by lt_detectron's checkpoint loader (``torch.load(weights_only=True)``):
tensors only, no code runs.
"""

import argparse
import os
import pickle
import re
import sys

import torch

from lt_detectron.engine.backbone_keys import RESNET_BLOCKS
from lt_detectron.engine.checkpoint import atomic_write, load_checkpoint_file

__all__ = [
    "CONFIG_FOR_TORCHVISION_WEIGHTS",
    "config_for_state_dict",
    "convert_state_dict",
    "convert_file",
    "convert",
]

# config overrides every detectron2 ResNet config needs for torchvision weights (tested); the
# architecture lines (depth, groups, width) come from config_for_state_dict
CONFIG_FOR_TORCHVISION_WEIGHTS = [
    ("MODEL.RESNETS.STRIDE_IN_1X1", False),
    ("MODEL.RESNETS.NORM", "FrozenBN"),
    ("INPUT.FORMAT", "RGB"),
    ("MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53]),
    ("MODEL.PIXEL_STD", [58.395, 57.12, 57.375]),
]

_STAGES = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}
_BLOCK = re.compile(r"^(layer[1-4])\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "conv1": "conv1",
    "conv2": "conv2",
    "conv3": "conv3",
    "bn1": "conv1.norm",
    "bn2": "conv2.norm",
    "bn3": "conv3.norm",
    "downsample.0": "shortcut",
    "downsample.1": "shortcut.norm",
}
_STEM_PARTS = {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"}


class ConversionError(ValueError):
    pass


def _rename(key):
    """torchvision name -> detectron2 name, or None for keys that are dropped."""
    if key.endswith("num_batches_tracked") or key.startswith("fc."):
        return None
    prefix, _, param = key.rpartition(".")
    m = _BLOCK.match(prefix)
    if m:
        stage, block, part = m.groups()
        if part in _BLOCK_PARTS:
            return "%s.%s.%s.%s" % (_STAGES[stage], block, _BLOCK_PARTS[part], param)
    elif prefix in _STEM_PARTS:
        return "%s.%s" % (_STEM_PARTS[prefix], param)
    raise ConversionError("unexpected key %r: not a torchvision ResNet parameter" % key)


def convert_state_dict(state_dict):
    """Return detectron2 names -> float numpy arrays for a torchvision ResNet ``state_dict``."""
    if not isinstance(state_dict, dict) or not state_dict:
        raise ConversionError("expected a non-empty dict of tensors (a torchvision state_dict)")
    for required in (
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer4.0.conv3.weight",
    ):
        if required not in state_dict:
            raise ConversionError(
                "no %r: this is not a torchvision bottleneck ResNet state_dict (ResNet-50/101/152, "
                "ResNeXt)" % required
            )
    out = {}
    for key, value in state_dict.items():
        new = _rename(key)
        if new is None:
            continue
        if not torch.is_tensor(value):
            raise ConversionError("value of %r is a %s, not a tensor" % (key, type(value).__name__))
        out[new] = value.detach().cpu().float().numpy()
    return out


def config_for_state_dict(state_dict):
    """The detectron2 config lines for a torchvision bottleneck ResNet / ResNeXt ``state_dict``:
    ``MODEL.RESNETS.DEPTH`` from the blocks per stage, ``NUM_GROUPS`` / ``WIDTH_PER_GROUP`` from the
    first 3x3 convolution, then :data:`CONFIG_FOR_TORCHVISION_WEIGHTS`. Only shapes are read."""
    blocks = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        idx = {
            int(m.group(2))
            for k in state_dict
            for m in [_BLOCK.match(k)]
            if m and m.group(1) == stage
        }
        if idx != set(range(len(idx))):
            raise ConversionError("%s has blocks %s: not numbered 0..n-1" % (stage, sorted(idx)))
        blocks.append(len(idx))
    depth = {v: d for d, v in RESNET_BLOCKS.items()}.get(tuple(blocks))
    if depth is None:
        raise ConversionError(
            "blocks per stage %s are not a ResNet detectron2 builds (%s); not converted"
            % (
                tuple(blocks),
                ", ".join("R-%d: %s" % (d, v) for d, v in sorted(RESNET_BLOCKS.items())),
            )
        )
    conv2 = tuple(state_dict["layer1.0.conv2.weight"].shape)  # (width, width / groups, 3, 3)
    if len(conv2) != 4 or conv2[1] == 0 or conv2[0] % conv2[1]:
        raise ConversionError("layer1.0.conv2.weight has shape %s: not a grouped 3x3" % (conv2,))
    groups = conv2[0] // conv2[1]
    lines = [
        ("MODEL.RESNETS.DEPTH", depth),
        ("MODEL.RESNETS.NUM_GROUPS", groups),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", conv2[0] // groups),
    ]
    stem = int(state_dict["conv1.weight"].shape[0])
    res2 = int(state_dict["layer1.0.conv3.weight"].shape[0])
    if stem != 64:  # torchvision's are always 64 / 256 (detectron2's defaults)
        lines.append(("MODEL.RESNETS.STEM_OUT_CHANNELS", stem))
    if res2 != 256:
        lines.append(("MODEL.RESNETS.RES2_OUT_CHANNELS", res2))
    return lines + list(CONFIG_FOR_TORCHVISION_WEIGHTS)


def _read_state_dict(path):
    try:
        data = load_checkpoint_file(path)  # weights_only: tensors and plain types, no code runs
    except FileNotFoundError:
        raise ConversionError("%s: no such file" % os.path.abspath(path)) from None
    except Exception as e:
        raise ConversionError(
            "%s: not a tensors-only torch file (%s: %s)"
            % (os.path.abspath(path), type(e).__name__, e)
        ) from None
    # checkpoints that wrap the weights
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    return data


def convert(src, dst):
    """Convert ``src`` (torchvision ``.pth``) to ``dst`` (detectron2 ``.pkl``); returns (number of
    converted arrays, config lines). ``dst`` is written atomically and only after a full
    conversion: a failed write (a full disk) leaves no partial file and ``dst`` as it was."""
    if not dst.endswith(".pkl"):
        raise ConversionError(
            "output %r must end with .pkl (detectron2 reads .pkl as this format)" % dst
        )
    out = os.path.abspath(dst)
    if os.path.isdir(out):
        raise ConversionError(
            "output %s is a folder: give a file name, e.g. %s"
            % (out, os.path.join(out, "R-50-torchvision.pkl"))
        )
    try:
        state_dict = _read_state_dict(src)
        model = convert_state_dict(state_dict)
        config = config_for_state_dict(state_dict)
    except ConversionError as e:
        msg = str(e)
        raise ConversionError(
            msg if msg.startswith(os.path.abspath(src)) else "%s: %s" % (os.path.abspath(src), msg)
        ) from None
    payload = {"model": model, "__author__": "torchvision", "matching_heuristics": True}
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        atomic_write(out, lambda f: pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError as e:
        raise ConversionError(
            "cannot write %s (%s); nothing was written%s. Free space or choose another output path"
            % (
                out,
                e.strerror or e,
                " and the previous file is unchanged" if os.path.exists(out) else "",
            )
        ) from None
    return len(model), config


def convert_file(src, dst):
    """:func:`convert`, returning the number of converted arrays only."""
    return convert(src, dst)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="torchvision ResNet state dict (.pth)")
    parser.add_argument("output", help="detectron2 weights file to write (.pkl)")
    args = parser.parse_args(argv)
    try:
        n, config = convert(args.input, args.output)
    except ConversionError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("wrote %d arrays to %s" % (n, os.path.abspath(args.output)))
    print("use it with these config changes:")
    print("  MODEL.WEIGHTS %s" % os.path.abspath(args.output))
    for key, value in config:
        print("  %s %s" % (key, value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
