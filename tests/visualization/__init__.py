"""Tests of ``lt_detectron/visualization``."""
