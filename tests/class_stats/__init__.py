"""Tests of ``lt_detectron/class_stats``."""
