"""Plots, as pure functions that write one PNG and return its path (matplotlib, Agg backend).

- :mod:`.plots`: the plots the papers use to explain the methods (classifier weight norms, a loss'
  gradient statistics) and the shared drawing helpers;
- :mod:`.result_plots`: plots of an evaluation (per-class AP vs training instances, per-category AP);
- :mod:`.bofl_plots`: BOFL's weight schedule over epochs;
- :mod:`.audit_plots`: a dataset's long-tail audit (counts by LVIS band, repeat factors).

The training hooks (:mod:`lt_detectron.engine.hooks`) and ``tools/plot_methods.py`` call them.
Importing this package imports no plotting library; matplotlib is imported when a plot is drawn.
"""
