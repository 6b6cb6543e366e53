"""Tests of ``lt_detectron/utils`` (the test fixtures in the real formats included)."""
