"""The layout planner: chooses each module's GPUs and TP/CP/PP/DP from a cost and memory model.

Pure Python (no torch, no megatron), one module per concern, in the order data flows:

* ``mimo_toolkit.costs`` (shared with the runtime): parameter counts, forward FLOPs, work
  multipliers from freezing, published GPU peaks;
* ``workload``: a job turned into per-module work, batch, precision;
* ``hardware`` / ``calibration``: the machine (published peaks x assumed efficiencies, or a
  measured calibration profile) and collective times;
* ``memory`` / ``cost``: bytes per GPU and seconds per step of a layout;
* ``rules``: cheap validity tests for pruning, then the project's own validation;
* ``search`` / ``candidate``: the layouts searched and the ones kept;
* ``plan`` / ``report`` / ``apply``: the ``mimo-toolkit plan`` command as library calls.

See docs/planner.md for the formulas, the search and calibration.
"""
