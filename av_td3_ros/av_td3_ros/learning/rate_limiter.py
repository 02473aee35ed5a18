"""
The samples-per-insert rate limiter (Reverb's idea): how fast the learner may consume transitions.

In synchronous mode it gates the learner's updates and gives the actors their insert allowance,
so a run learns the same amount per transition whatever the machine's speed (``learner_loop``).
"""

from __future__ import annotations

import numpy as np


class SamplesPerInsertLimiter:
    """
    Keep sampled transitions per inserted transition near a target, as Reverb's rate limiter.

    ``samples = n_updates * batch_size``. Sampling is allowed once ``min_size_to_sample``
    transitions arrived and while ``samples + batch <= spi * (inserts - min_size) + error_buffer``;
    inserting is allowed while it keeps ``inserts * spi - samples`` within ``error_buffer`` of
    its target. ``samples_per_insert == 0`` means no limit. Counts are totals since one origin
    (the trainer restores both on resume).
    """

    def __init__(self, samples_per_insert: float, min_size_to_sample: int,
                 error_buffer: float) -> None:
        if samples_per_insert < 0 or min_size_to_sample < 0 or error_buffer < 0:
            raise ValueError('samples_per_insert, min_size_to_sample and error_buffer must be '
                             f'>= 0, got {samples_per_insert}, {min_size_to_sample}, '
                             f'{error_buffer}')
        self.samples_per_insert = float(samples_per_insert)
        self.min_size_to_sample = int(min_size_to_sample)
        self.error_buffer = float(error_buffer)

    def can_sample(self, n_updates_done: int, inserts: int, batch_size: int) -> bool:
        """Whether one more update (of ``batch_size`` samples) keeps the ratio."""
        if inserts < max(self.min_size_to_sample, 1):
            return False
        if self.samples_per_insert == 0:
            return True
        allowed = (self.samples_per_insert * (inserts - self.min_size_to_sample)
                   + self.error_buffer)
        return (n_updates_done + 1) * batch_size <= allowed

    def insert_allowance(self, n_updates_done: int, inserts: int, batch_size: int) -> int:
        """Transitions that may still be inserted before actors should wait (-1: no limit)."""
        if self.samples_per_insert == 0:
            return -1
        samples = n_updates_done * batch_size
        by_ratio = int(np.floor((samples + self.error_buffer) / self.samples_per_insert
                                + self.min_size_to_sample - inserts))
        return max(by_ratio, self.min_size_to_sample - inserts, 0)
