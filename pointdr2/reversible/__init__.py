"""Dr2Net: reversible dual-residual surrogates of pretrained residual networks.

The equations live in :mod:`pointdr2.reversible.stack`; error growth and the ``auto`` guard in
:mod:`pointdr2.reversible.precision`; the alpha/beta schedule in :mod:`pointdr2.reversible.schedule`.
"""

from pointdr2.reversible.precision import (
    PrecisionGuard,
    choose_cache_every,
    predicted_error,
    reconstruction_growth,
)
from pointdr2.reversible.schedule import CoefficientSchedule, apply_coefficients, iter_stacks, stack_reports
from pointdr2.reversible.stack import (
    GAINS,
    MODES,
    OUTPUTS,
    Dr2Stack,
    ResidualBlock,
    check_unit_form,
    frozen_running_stats,
    output_weights,
    unit_coefficients,
)

__all__ = [
    "MODES",
    "OUTPUTS",
    "GAINS",
    "CoefficientSchedule",
    "Dr2Stack",
    "PrecisionGuard",
    "ResidualBlock",
    "apply_coefficients",
    "check_unit_form",
    "choose_cache_every",
    "frozen_running_stats",
    "iter_stacks",
    "output_weights",
    "predicted_error",
    "reconstruction_growth",
    "stack_reports",
    "unit_coefficients",
]
