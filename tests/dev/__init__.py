"""Tests of the developer scripts in dev/."""
