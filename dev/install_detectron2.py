#!/usr/bin/env python
"""Install a working detectron2 v0.6 into the current Python environment.

detectron2 publishes no wheel for Python 3.11. The PyPI sdist ``pb1-detectron2==0.6`` is
FAIR's detectron2 v0.6 Python code (Apache-2.0) without its C++ sources, so a plain
``pip install`` fails. This script, run at setup time (never at import time):

1. leaves an already importable detectron2 alone when it has its compiled ops
   (``detectron2._C`` is a real extension) or is the build this script made;
2. otherwise downloads the sdist (``pip download``), unpacks it in a temporary folder and
   patches it:
   - no C++ extension is built; ``detectron2/_C.py`` is a placeholder whose attributes raise
     a clear error naming the feature that needs the compiled ops and the fix;
   - ``Image.LINEAR`` (removed in Pillow 10) is read as ``Image.BILINEAR``;
   - the NumPy aliases removed in NumPy 1.24 (``np.int``, ``np.float``, ``np.bool``,
     ``np.str``) are replaced by the builtins;
   - ``model_zoo`` no longer imports ``pkg_resources`` (gone from setuptools >= 82);
   - the model-zoo configs (``detectron2/model_zoo/configs/**``, shipped in the sdist) are
     installed as package data, so ``model_zoo.get_config_file(...)`` works (the sdist's
     setup.py looks for them in a top-level ``configs/`` folder that only a git checkout has);
   - ``install_requires`` drops the pins that do not install or are not needed
     (``black==21.4b2``, ``future``, ``pydot``);
   - ``RetinaNetHead`` checks the norm type on a 32-channel layer instead of a 1-channel one,
     so ``MODEL.RETINANET.NORM: "GN"`` builds (GroupNorm(32, 1) raised before);
3. builds a wheel of the patched tree (cached in ``.cache/wheels``) and installs it.

No detectron2 source ends up in this repository: the sdist is fetched from PyPI at setup.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
MARKER = "LT_DETECTRON_PLACEHOLDER_C"
PATCH_VERSION = "5"  # bump when the patches change, so that old builds are replaced

PLACEHOLDER_C = '''"""Placeholder for detectron2's compiled extension, written by lt_detectron's installer.

This detectron2 was built from the PyPI sdist ``pb1-detectron2==0.6``, which ships no C++
sources. Everything that needs no compiled op works (Faster/Mask/Cascade R-CNN, RetinaNet,
the data pipeline, the official COCO/LVIS evaluators). The features below raise here.
"""

LT_DETECTRON_PLACEHOLDER_C = True
PATCH_VERSION = "{patch_version}"

_FEATURES = {{
    "nms_rotated": "rotated-box NMS (RotatedBoxes, RRPN)",
    "box_iou_rotated": "rotated-box IoU (RotatedBoxes, RRPN)",
    "roi_align_rotated_forward": "ROIAlignRotated",
    "roi_align_rotated_backward": "ROIAlignRotated",
    "deform_conv_forward": "deformable convolution (DeformConv)",
    "deform_conv_backward_input": "deformable convolution (DeformConv)",
    "deform_conv_backward_filter": "deformable convolution (DeformConv)",
    "modulated_deform_conv_forward": "modulated deformable convolution",
    "modulated_deform_conv_backward": "modulated deformable convolution",
    "InstanceAnnotation": "the fast COCO-eval path (COCOEvaluator(use_fast_impl=True))",
    "COCOevalEvaluateImages": "the fast COCO-eval path (COCOEvaluator(use_fast_impl=True))",
    "COCOevalAccumulate": "the fast COCO-eval path (COCOEvaluator(use_fast_impl=True))",
}}


def get_compiler_version():
    return "none (placeholder _C installed by lt_detectron)"


def get_cuda_version():
    return "none (placeholder _C installed by lt_detectron)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    feature = _FEATURES.get(name, "the compiled op '%s'" % name)
    raise RuntimeError(
        "%s needs detectron2's compiled C++/CUDA ops, but this detectron2 was installed by "
        "lt_detectron from the PyPI sdist pb1-detectron2==0.6, which has no C++ sources. "
        "Fix: build detectron2 from source (pip install "
        "'git+https://github.com/facebookresearch/detectron2.git'); lt_detectron's setup leaves "
        "a detectron2 with compiled ops untouched. For COCO evaluation pass use_fast_impl=False."
        % feature
    )
'''

MODEL_ZOO_RESOURCE = '''
def _config_path_in_package(config_path):
    # replaces pkg_resources.resource_filename (setuptools >= 82 has no pkg_resources)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)
'''


def log(msg):
    print("[install_detectron2] " + msg, flush=True)


def detectron2_state():
    """Return 'compiled', 'ours', 'stale' or 'missing' for the detectron2 importable now."""
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.find_spec('detectron2')\n"
        "if spec is None: print('missing'); sys.exit()\n"
        "import detectron2\n"
        "try:\n"
        "    import detectron2._C as C\n"
        "except Exception:\n"
        "    print('stale'); sys.exit()\n"
        "if getattr(C, '%s', False):\n"
        "    print('ours' if getattr(C, 'PATCH_VERSION', '') == '%s' else 'stale')\n"
        "else:\n"
        "    print('compiled')\n" % (MARKER, PATCH_VERSION)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return "stale"
    return out.stdout.strip().splitlines()[-1]


def _replace(path, old, new, count_min=1, regex=False):
    with open(path) as f:
        text = f.read()
    if regex:
        text, n = re.subn(old, new, text)
    else:
        n = text.count(old)
        text = text.replace(old, new)
    if n < count_min:
        raise RuntimeError(
            "patch failed: %r not found in %s; the sdist differs from the one this installer "
            "was written for (%s)" % (old, path, SDIST)
        )
    with open(path, "w") as f:
        f.write(text)
    return n


def patch_tree(root):
    pkg = os.path.join(root, "detectron2")
    # 1. no C++ extension; placeholder _C; trimmed requirements
    setup_py = os.path.join(root, "setup.py")
    _replace(setup_py, "ext_modules=get_extensions(),", "ext_modules=[],")
    _replace(setup_py, 'cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},', "")
    for req in (
        '"black==21.4b2",',
        '"future",  # used by caffe2',
        '"pydot",  # used to save caffe2 SVGs',
    ):
        _replace(setup_py, req, "")
    # setup.py imports torch only for the extension; keep it importable without build isolation
    with open(os.path.join(pkg, "_C.py"), "w") as f:
        f.write(PLACEHOLDER_C.format(patch_version=PATCH_VERSION))
    # 2. Pillow >= 10
    _replace(
        os.path.join(pkg, "data", "transforms", "transform.py"), "Image.LINEAR", "Image.BILINEAR"
    )
    # 3. NumPy >= 1.24 aliases (every file, word-bounded; np.int64 etc. are untouched)
    n_total = 0
    for path in glob.glob(os.path.join(pkg, "**", "*.py"), recursive=True):
        with open(path) as f:
            text = f.read()
        new, n = re.subn(r"\bnp\.(int|float|bool|str|object)\b(?![0-9_])", r"\1", text)
        if n:
            n_total += n
            with open(path, "w") as f:
                f.write(new)
    if n_total < 5:
        raise RuntimeError("patch failed: expected NumPy aliases in %s" % SDIST)
    # 4. pkg_resources in model_zoo
    mz = os.path.join(pkg, "model_zoo", "model_zoo.py")
    _replace(mz, "import pkg_resources\n", "")
    _replace(mz, "import os\n", "import os\n" + MODEL_ZOO_RESOURCE)
    _replace(
        mz,
        r'pkg_resources\.resource_filename\(\s*"detectron2\.model_zoo",\s*'
        r'os\.path\.join\("configs", config_path\)\s*\)',
        "_config_path_in_package(config_path)",
        regex=True,
    )
    # 5. model-zoo configs as package data (listed explicitly: independent of the build's cwd)
    zoo = os.path.join(pkg, "model_zoo")
    configs = sorted(
        os.path.relpath(p, zoo).replace(os.sep, "/")
        for p in glob.glob(os.path.join(zoo, "configs", "**", "*"), recursive=True)
        if p.endswith((".yaml", ".py"))
    )
    if not any(c.endswith(".yaml") for c in configs):
        raise RuntimeError(
            "patch failed: no model-zoo configs under detectron2/model_zoo/configs in %s" % SDIST
        )
    _replace(
        setup_py,
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": %r},' % configs,
    )
    # 6. RetinaNetHead probes the norm type with get_norm(norm, 1): GroupNorm(32, 1) raises, so a GN
    #    head (MODEL.RETINANET.NORM "GN") could not be built. Probe with 32 channels instead.
    _replace(
        os.path.join(pkg, "modeling", "meta_arch", "retinanet.py"),
        "norm_name = str(type(get_norm(norm, 1)))",
        "norm_name = str(type(get_norm(norm, 32)))",
    )
    log(
        "patched %d NumPy aliases, Image.LINEAR, pkg_resources, _C placeholder, RetinaNetHead GN; "
        "%d model-zoo configs" % (n_total, len(configs))
    )


def build_wheel(cache_dir):
    wheel_dir = os.path.join(cache_dir, "wheels", "detectron2-p" + PATCH_VERSION)
    found = glob.glob(os.path.join(wheel_dir, "pb1_detectron2-*.whl"))
    if found:
        return found[0]
    tmp = tempfile.mkdtemp(prefix="lt_d2_")
    try:
        sdist_dir = os.path.join(cache_dir, "sdist")
        os.makedirs(sdist_dir, exist_ok=True)
        tars = glob.glob(os.path.join(sdist_dir, "pb1-detectron2-0.6.tar.gz"))
        if not tars:
            log("downloading %s from PyPI" % SDIST)
            # --no-build-isolation: the sdist's setup.py imports torch to describe itself
            subprocess.check_call(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--no-build-isolation",
                    "-d",
                    sdist_dir,
                    SDIST,
                ]
            )
            tars = glob.glob(os.path.join(sdist_dir, "pb1-detectron2-0.6.tar.gz"))
        with tarfile.open(tars[0]) as tf:
            tf.extractall(tmp, filter="data")
        root = os.path.join(tmp, "pb1-detectron2-0.6")
        patch_tree(root)
        os.makedirs(wheel_dir, exist_ok=True)
        log("building the wheel (pure Python, no C++ extension)")
        subprocess.check_call(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                wheel_dir,
                root,
            ]
        )
        return glob.glob(os.path.join(wheel_dir, "pb1_detectron2-*.whl"))[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache"),
    )
    parser.add_argument("--force", action="store_true", help="rebuild and reinstall our build")
    args = parser.parse_args()

    state = detectron2_state()
    if state == "compiled":
        log("a detectron2 with compiled ops is installed: leaving it alone")
        return
    if state == "ours" and not args.force:
        log("detectron2 (pb1-detectron2 0.6, patched, patch %s) already installed" % PATCH_VERSION)
        return
    wheel = build_wheel(args.cache_dir)
    log("installing " + os.path.basename(wheel))
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", wheel]
    )
    state = detectron2_state()
    if state != "ours":
        raise SystemExit("detectron2 install failed: state after install is %r" % state)
    log("detectron2 ready")


if __name__ == "__main__":
    main()
