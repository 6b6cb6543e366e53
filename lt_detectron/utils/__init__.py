"""Utilities that are not part of the training path (test fixtures)."""
