"""
Exploration noise of an actor: white Gaussian (TD3's) or temporally correlated colored noise.

Why colored noise: a car needs many consecutive steps of throttle before anything the critic can
tell apart happens, and its brake is stronger than its throttle, so zero-mean white noise around
a near-zero initial policy leaves it standing still. Noise with a power spectrum ~ 1/f^beta
(beta 1 = pink, Eberhard et al., "Pink Noise Is All You Need", ICLR 2023) keeps the same
per-step std but holds its sign for many steps, so exploring policies drive off and steer
through whole curves. One sequence is drawn per episode (``reset``), as the paper does.
"""

from __future__ import annotations

import numpy as np

__all__ = ['ExplorationNoise', 'powerlaw_noise']


def powerlaw_noise(beta: float, length: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """
    Return ``(length, dims)`` Gaussian noise with power spectrum ~ 1/f^beta, unit std per dim.

    Spectral synthesis: complex white noise shaped by f^(-beta/2) (the lowest frequency stands in
    for f = 0, so the sequence has no unbounded drift), inverse real FFT, normalised per dimension.
    """
    if length < 2:
        raise ValueError(f'colored noise needs length >= 2, got {length}')
    freqs = np.fft.rfftfreq(length)
    freqs[0] = freqs[1]
    scale = freqs ** (-beta / 2.0)
    spectrum = (rng.standard_normal((dims, freqs.size))
                + 1j * rng.standard_normal((dims, freqs.size))) * scale
    series = np.fft.irfft(spectrum, n=length, axis=1)
    series /= series.std(axis=1, keepdims=True)
    return series.T


class ExplorationNoise:
    """
    Per-step action noise of one actor, times a std the caller schedules.

    ``beta`` 0 draws ``rng.normal`` each step (the white Gaussian noise of TD3, one draw per
    step); ``beta`` > 0 draws a ``horizon``-step colored sequence at each ``reset`` (episode
    start) and walks along it, drawing the next one if an episode outlasts it.
    """

    def __init__(self, dims: int, rng: np.random.Generator, beta: float = 0.0,
                 horizon: int = 1000) -> None:
        if not 0.0 <= beta <= 3.0:
            raise ValueError(f'exploration noise beta must be in [0, 3], got {beta}')
        if horizon < 2:
            raise ValueError(f'exploration noise horizon must be >= 2, got {horizon}')
        self.dims = dims
        self.beta = float(beta)
        self.horizon = int(horizon)
        self._rng = rng
        self._sequence: np.ndarray | None = None
        self._index = 0

    def reset(self) -> None:
        """Start a new episode: the next colored sample opens a fresh sequence."""
        self._sequence = None

    def sample(self, std: float) -> np.ndarray:
        """Return one noise vector with per-dimension std ``std``."""
        if self.beta == 0.0:
            return self._rng.normal(0.0, std, self.dims)
        if self._sequence is None or self._index >= self.horizon:
            self._sequence = powerlaw_noise(self.beta, self.horizon, self.dims, self._rng)
            self._index = 0
        value = self._sequence[self._index] * std
        self._index += 1
        return value
