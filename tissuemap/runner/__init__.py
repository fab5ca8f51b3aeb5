"""The local runner behind `tissuemap run`: every step of the pipeline on one machine.

It calls the same step commands, with the same options, that the Nextflow modules call, so both paths produce the
same files. The steps are planned first (:mod:`~tissuemap.runner.steps`, from the run's options:
:mod:`~tissuemap.runner.options`), then run in order (:mod:`~tissuemap.runner.execution`): each step's command line
is logged and recorded in ``pipeline_info/steps.json``, with its time, what it read and what it wrote, and a rerun
reuses the steps that finished. One run at a time writes into a folder (:mod:`~tissuemap.runner.lock`).
"""

from tissuemap.runner.execution import run_steps
from tissuemap.runner.lock import exclusive_use
from tissuemap.runner.options import PASSED_OPTIONS, RunOptions, run_option, translate_message
from tissuemap.runner.steps import Step, check_inputs, plan_steps

__all__ = ["PASSED_OPTIONS", "RunOptions", "Step", "check_inputs", "exclusive_use", "plan_steps", "run_option",
           "run_steps", "translate_message"]
