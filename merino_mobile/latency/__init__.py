"""Latency: what a device's table says a card costs, and how the table is measured.

    grid.py      the shapes to measure, from a search space
    micro.py     each latency term as a micro-model of the decoder's own modules
    programs.py  micro-models batched into programs, exported once per content
    profile.py   the profile run: export, time, commit each point (resume after a kill)
    sentinel.py  drift detection by a re-measured point
    store.py     the SQLite store of every measurement
    table.py     the latency lookup table (LUT): JSON, interpolated surfaces
    predict.py   the latency model the solver uses, and a card's prediction
"""

from merino_mobile.latency.predict import LatencyTable, cold_fraction, predict_latency

__all__ = ["LatencyTable", "cold_fraction", "predict_latency"]
