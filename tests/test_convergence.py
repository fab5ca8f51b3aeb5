"""The convergence judgement shared by both training steps (tissuemap.convergence), on synthetic loss histories."""

import numpy as np
import pytest

from tissuemap.convergence import judge_convergence, notice

STEPS = 3000


def history(decay_steps: float, noise: float, steps: int = STEPS, seed: int = 0) -> np.ndarray:
    """A loss falling exponentially from 2e6 to 1e6 with time constant ``decay_steps``, plus relative SVI-like noise."""
    rng = np.random.default_rng(seed)
    return 1e6 * (1 + np.exp(-np.arange(steps) / decay_steps)) * (1 + noise * rng.standard_normal(steps))


@pytest.mark.parametrize("noise", [0.0, 1e-3, 1e-2])
def test_a_levelled_loss_is_converged_even_when_noisy(noise):
    record = judge_convergence(history(STEPS / 20, noise), "--max-epochs", "--mapping-epochs")
    assert record["converged"] is True, record
    assert record["advice"] == "" and notice(record, "Mapping") is None


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_a_still_falling_loss_is_not_converged_and_says_what_to_do(noise):
    record = judge_convergence(history(STEPS, noise), "--max-epochs", "--mapping-epochs")
    assert record["converged"] is False, record
    assert record["relative_tail_fall"] > 0.01
    assert record["advice"] == ("the loss was still falling at the last step: train longer, e.g. --max-epochs 9000 "
                                "(--mapping-epochs 9000 in tissuemap run)")
    assert "train longer" in notice(record, "Mapping")


def test_a_straight_falling_line_is_not_converged():
    record = judge_convergence(np.linspace(5e5, 4e5, 250), "--max-epochs", "--regression-epochs")
    assert record["converged"] is False
    # the line falls 10% of its steps' worth in the last tenth, of a total decrease of 95% of its length
    assert record["relative_tail_fall"] == pytest.approx(0.1 / 0.95, rel=0.05)


def test_a_short_noisy_history_must_show_it_levelled_off():
    # 30 epochs barely below their start, noise larger than the fall: nothing shows training has levelled off
    short = history(300, 0.005, steps=30, seed=2)
    assert judge_convergence(short, "--max-epochs", "--regression-epochs")["converged"] is False
    # the same noise over a long, levelled history is accepted
    assert judge_convergence(history(30, 0.005, steps=300, seed=2), "--max-epochs", "--regression-epochs")[
        "converged"] is True


def test_short_flat_or_broken_histories_are_not_judged():
    for loss in ([3.0, 2.0, 1.0], [1.0] * 10 + [np.nan] * 20, np.linspace(1, 2, 50)):
        record = judge_convergence(loss, "--max-epochs", "--mapping-epochs")
        assert record["converged"] is None and notice(record, "Mapping") is None
