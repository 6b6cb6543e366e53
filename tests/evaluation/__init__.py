"""Tests of ``lt_detectron/evaluation``."""
