"""The profile's drift detector: one grid point re-measured every so often.

A shared machine or a warming phone changes speed during a profile. The sentinel (the largest
decode layer of the grid, long enough to time well) is measured before the first point and then
every `sentinel.every` points. When a reading drifts more than `sentinel.threshold` from the
reference level (and a second reading agrees it is not a one-off), the device runs at a new
level: the points measured since the last good reading are measured again, and the new level
becomes the reference. Readings are stored, so a resumed profile compares with the level its last
run established.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from merino_mobile.latency.store import Store


class Sentinel:
    """The sentinel's reference level and its readings, for one (fingerprint, runtime, quant)."""

    def __init__(self, store: Store, key: tuple[str, str, str], threshold: float,
                 measure: Callable[[], float | None]) -> None:
        self.store, self.key, self.threshold, self.measure = store, key, threshold, measure
        history = store.sentinels(*key)
        self.reference: float | None = history[-1][0] if history else None
        # the store sequence number of the last good reading: points after it are suspect
        self.last_good_seq = max((s for _, s, good in history if good), default=0)
        self.readings: list[dict[str, Any]] = []

    def check(self) -> bool:
        """Measure the sentinel; False when it drifted (confirmed by a second measurement)."""
        ms = self.measure()
        if ms is None:
            return True  # a sentinel that cannot run says nothing about drift
        drift = 0.0 if self.reference is None else ms / self.reference - 1
        if abs(drift) > self.threshold:
            # one slow or fast reading is noise until a second one agrees
            again = self.measure()
            if again is not None and abs(again / ms - 1) <= self.threshold:
                ms = (ms + again) / 2
            elif again is not None:
                ms = again
            drift = ms / self.reference - 1
        good = abs(drift) <= self.threshold
        self.store.record_sentinel(*self.key, ms, good)
        self.readings.append({"median_ms": ms, "drift": drift, "good": good})
        if self.reference is None or not good:
            self.reference = ms  # later points compare with the device's new level
        if good:
            self.last_good_seq = max(s for _, s, _ in self.store.sentinels(*self.key))
        return good
