"""Tests of ``lt_detectron/engine``."""
