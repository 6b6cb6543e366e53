"""Tests of ``lt_detectron/losses``."""
