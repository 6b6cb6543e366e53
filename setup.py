#!/usr/bin/env python
from setuptools import find_packages, setup

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
    package_data={"lt_detectron": ["data/stats/*.csv", "data/stats/*.md"]},
    python_requires=">=3.9",
    # detectron2 is installed by dev/install_detectron2.py (no wheel exists for Python 3.11)
    install_requires=["torch", "torchvision", "numpy", "pycocotools", "lvis"],
)
