"""Tests of lt_detectron/config.py, config_reads.py and config_smoke.py, and of the shipped configs."""
