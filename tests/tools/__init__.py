"""Tests of the user commands in tools/ (and datasets/prepare_coco_lt.py)."""
