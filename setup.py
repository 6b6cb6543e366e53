#!/usr/bin/env python
import sys

from setuptools import Extension, find_packages, setup


def compiled_kernels():
    """The optional compiled kernels of evaluation: ``lt_detectron/evaluation/_roi_rle.pyx`` and
    ``_coco_rle.pyx`` (the mask encoder; boxes and areas of RLEs). Without Cython or a C compiler
    they are skipped and NumPy / pycocotools paths giving the same results are used
    (``lt_detectron.evaluation.roi_masks.compiled_encoder`` says which)."""
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError:
        return []
    # no floating-point contraction (fused multiply-add): float32 steps rounded as NumPy/torch do
    flags = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]
    exts = [
        Extension(
            f"lt_detectron.evaluation.{name}",
            [f"lt_detectron/evaluation/{name}.pyx"],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=flags,
            optional=True,  # a failed build is a warning, not an error
        )
        for name in ("_roi_rle", "_coco_rle")
    ]
    return cythonize(exts, quiet=True)


setup(
    name="lt_detectron",
    version="0.1.0",
    description="Long-tailed object detection for Detectron2: BOFL, BAGS, EQL v2, ECM, C2AM",
    packages=find_packages(
        exclude=(
            "tests",
            "tests.*",
            "configs",
            "tools",
            "benchmarks",
            "benchmarks.*",
            "dev",
            "examples",
        )
    ),
    ext_modules=compiled_kernels(),
    package_data={"lt_detectron": ["data/stats/*.csv", "data/stats/*.md"]},
    python_requires=">=3.9",
    # detectron2 is installed by dev/install_detectron2.py (no wheel exists for Python 3.11)
    install_requires=["torch", "torchvision", "numpy", "pycocotools", "lvis"],
)
