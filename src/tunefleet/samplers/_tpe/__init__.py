"""A drop-in ``optuna.samplers.TPESampler`` whose ask cost does not grow with Python work per trial.

Optuna's TPE rebuilds everything from every ``FrozenTrial`` on each ask: it filters the trial list,
converts every parameter to its internal representation, sorts trials by value and evaluates the
"above" Parzen estimator (one kernel per trial) partly through per-element Python (``log_ndtr``,
``erf``). That is about 10 microseconds per trial already in the study, paid on every ask.

This subclass keeps Optuna's algorithm and random stream and replaces only the hot parts:

* ``_TrialTable`` ingests each finished trial once (finished trials never change) into numpy
  columns indexed by trial number: state, values, pruned score, infeasibility score and the
  parameters. Each ask only looks at trials it has not seen finished (new or still running).
* The below/above split is done with numpy on those columns, with the same ordering and tie
  breaks as Optuna's ``_split_trials`` (stable sorts in trial-number order).
* The estimators are Optuna's ``_ParzenEstimator`` with the bandwidth step fed a sort order the
  table keeps (``_ParzenEstimatorFastSigmas``; identical kernels), and candidates are drawn by
  Optuna's own code from the same ``RandomState``; the log densities of the candidates are
  evaluated by ``_fast_log_pdf``: per-kernel constants once per kernel, the rest as blocked
  numpy.

Given the same study and seed the proposals are those of Optuna's TPE: identical candidates, and
acquisition values (used only for an argmax) that agree with Optuna's to about 1e-11. See
docs/samplers.md.
"""

from tunefleet.samplers._tpe._sampler import TPESampler

# Private helpers, re-exported for tests/samplers/test_tpe_exact.py, which checks them directly.
from tunefleet.samplers._tpe._parzen import _fast_log_pdf as _fast_log_pdf
from tunefleet.samplers._tpe._parzen import (
    _ParzenEstimatorFastSigmas as _ParzenEstimatorFastSigmas,
)
from tunefleet.samplers._tpe._table import _TrialTable as _TrialTable

__all__ = ["TPESampler"]
