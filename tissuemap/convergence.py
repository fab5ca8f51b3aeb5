"""Did training level off? One rule, applied to the loss history of both training steps (signatures and mapping).

The rule fits a straight line (least squares) to the last quarter of the history (:data:`FIT_FRACTION`) and
projects, from its slope, how much the loss fell over the last tenth of the steps (:data:`FALL_FRACTION`). Training
is judged **converged** (levelled off) when that fall, even at the upper end of its uncertainty (the slope plus
:data:`NOISE_Z` standard errors), is below :data:`MAX_TAIL_FALL` (1%) of the loss's total decrease (the mean of the
first tenth minus the line's value at the last step); otherwise **not converged**. A straight falling line falls 11%
of its total in its last tenth; a levelled curve about 0%.

The line averages the noise of many steps' losses (stochastic variational inference gives a noisy loss), and the
uncertainty term means that a short, noisy history is accepted only when it shows it has levelled off. The
judgement only reads the history: it changes no number of a fit.
"""

from __future__ import annotations

import math

import numpy as np

from tissuemap.log import logger

FIT_FRACTION = 0.25  # the last share of the history the line is fitted to
FALL_FRACTION = 0.1  # the share of the steps over which the fall is projected (and the first window's share)
MIN_VALUES = 20  # shorter histories are not judged
MAX_TAIL_FALL = 0.01  # of the total decrease, allowed over the last FALL_FRACTION of the steps
NOISE_Z = 1.0  # standard errors of the slope added to the fall


def judge_convergence(loss, option: str, run_option: str) -> dict:
    """Judge from ``loss`` (one value per step or epoch, lower is better) whether training levelled off.

    ``option`` is the step command's option that trains longer (``--max-epochs``), ``run_option`` the same option of
    ``tissuemap run`` (e.g. ``--mapping-epochs``); the advice names both.

    Returns a JSON-serialisable record: ``converged`` (True, False, or None when the history is too short, not
    finite, or did not decrease), ``rule`` (the rule in words), the numbers it compared (``fitted_values``,
    ``tail_fall`` and ``tail_fall_upper`` over the last ``fall_steps``, ``total_decrease``, ``relative_tail_fall``)
    and ``advice`` (what to do; empty when converged).
    """
    values = np.asarray(loss, dtype=np.float64)
    rule = (f"converged if a line fitted to the last {FIT_FRACTION:.0%} of the loss history shows it fell, over the "
            f"last {FALL_FRACTION:.0%} of the steps and with {NOISE_Z:g} standard errors of the slope added, by less "
            f"than {MAX_TAIL_FALL:.0%} of its total decrease")
    record = {"converged": None, "rule": rule, "values": int(values.size)}
    if values.size < MIN_VALUES:
        return {**record, "advice": f"too few loss values to judge (fewer than {MIN_VALUES})"}
    if not np.isfinite(values).all():
        return {**record, "advice": "the loss is not finite"}
    n = values.size
    fitted = max(3, int(round(FIT_FRACTION * n)))
    steps = np.arange(n - fitted, n, dtype=np.float64)
    slope, intercept = np.polyfit(steps, values[-fitted:], 1)
    residuals = values[-fitted:] - (slope * steps + intercept)
    slope_se = math.sqrt(residuals.var(ddof=2) / ((steps - steps.mean()) ** 2).sum())
    fall_steps = FALL_FRACTION * n
    tail_fall = float(-slope * fall_steps)
    tail_fall_upper = float((-slope + NOISE_Z * slope_se) * fall_steps)
    first = max(2, int(round(FALL_FRACTION * n)))
    total_decrease = float(values[:first].mean() - (slope * (n - 1) + intercept))
    record.update(fitted_values=fitted, fall_steps=fall_steps, tail_fall=tail_fall, tail_fall_upper=tail_fall_upper,
                  total_decrease=total_decrease,
                  relative_tail_fall=tail_fall / total_decrease if total_decrease > 0 else None)
    if total_decrease <= 0:
        return {**record, "advice": "the loss did not decrease: nothing to judge"}
    converged = tail_fall_upper < MAX_TAIL_FALL * total_decrease
    longer = suggested_length(n)
    record.update(
        converged=bool(converged),
        advice="" if converged else (f"the loss was still falling at the last step: train longer, e.g. {option} "
                                     f"{longer} ({run_option} {longer} in tissuemap run)"),
    )
    return record


def suggested_length(n: int) -> int:
    """A longer run to suggest: about three times ``n``, rounded to two significant digits."""
    longer = 3 * n
    digits = max(0, len(str(longer)) - 2)
    return int(round(longer, -digits))


def log_convergence(record: dict, what: str) -> None:
    """Log the judgement: a warning with what to do when training had not levelled off."""
    if record["converged"] is None:
        logger.info("%s: convergence not judged (%s)", what, record["advice"])
        return
    fall = (f"over the last {record['fall_steps']:g} of {record['values']} values it fell by about "
            f"{100 * record['relative_tail_fall']:.2g}% of its total decrease")
    if record["converged"]:
        logger.info("%s levelled off: %s", what, fall)
    else:
        logger.warning("%s has not converged: %s (%s)", what, record["advice"], fall)


def notice(record: dict | None, what: str) -> str | None:
    """The report's notice for a judgement (``None`` when there is nothing to say, or no judgement recorded)."""
    if not record or record.get("converged") is not False:
        return None
    return f"{what} had not converged: {record['advice']}. Results from unfinished training can be misleading."
