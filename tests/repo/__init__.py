"""Tests of the repository as a whole: the documentation blocks and the layout rules."""
