"""Tests of ``lt_detectron/modeling``."""
