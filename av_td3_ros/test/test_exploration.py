"""Exploration noise: white draws as before, colored noise with the spectrum and std it claims."""

from av_td3_ros.driving.exploration import ExplorationNoise, powerlaw_noise
import numpy as np
import pytest


def test_white_noise_draws_exactly_what_rng_normal_draws():
    noise = ExplorationNoise(2, np.random.default_rng(7))
    reference = np.random.default_rng(7)
    for _ in range(5):
        np.testing.assert_array_equal(noise.sample(0.3), reference.normal(0.0, 0.3, 2))


@pytest.mark.parametrize('beta', [1.0, 2.0])
def test_colored_noise_has_unit_std_and_its_power_law(beta):
    series = powerlaw_noise(beta, 4096, 64, np.random.default_rng(0))
    assert series.shape == (4096, 64)
    np.testing.assert_allclose(series.std(axis=0), 1.0, atol=1e-9)
    power = (np.abs(np.fft.rfft(series, axis=0)) ** 2).mean(axis=1)[1:]
    freqs = np.fft.rfftfreq(4096)[1:]
    slope = np.polyfit(np.log(freqs), np.log(power), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.15)


def test_pink_noise_pushes_one_way_for_many_steps():
    """What moves a car: the mean over one second (20 steps) swings far more than white noise's."""
    def one_second_means_std(noise: ExplorationNoise) -> float:
        series = np.array([noise.sample(1.0) for _ in range(1000)])     # one episode
        return float(series.reshape(50, 20, 4).mean(axis=1).std())
    white = one_second_means_std(ExplorationNoise(4, np.random.default_rng(1)))
    pink = one_second_means_std(ExplorationNoise(4, np.random.default_rng(1), beta=1.0))
    assert white == pytest.approx(20 ** -0.5, rel=0.2)
    assert pink > 2.5 * white


def test_reset_starts_a_new_sequence_and_long_episodes_draw_the_next():
    noise = ExplorationNoise(2, np.random.default_rng(3), beta=1.0, horizon=8)
    first = np.array([noise.sample(1.0) for _ in range(8)])
    np.testing.assert_allclose(first.std(axis=0), 1.0, atol=1e-9)   # one whole sequence
    ninth = noise.sample(1.0)                                        # past the horizon: next one
    noise.reset()
    again = np.array([noise.sample(1.0) for _ in range(8)])
    assert not np.allclose(again, first)
    assert np.isfinite(ninth).all()
    assert np.allclose(np.array([noise.sample(0.0) for _ in range(3)]), 0.0)


@pytest.mark.parametrize('kwargs', [{'beta': -0.1}, {'beta': 3.5}, {'beta': 1.0, 'horizon': 1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ExplorationNoise(2, np.random.default_rng(0), **kwargs)
