"""Plots of a run (training curves, per-class AP vs training instances, BOFL's weights).

Modules: ``plots`` (the method plots written during training), ``result_plots`` (plots of a
finished evaluation), ``bofl_plots`` (BOFL's per-class weights). Importing this package does not
import matplotlib; each module imports it when a plot is drawn.
"""
