"""Tests of ``lt_detectron/data``."""
