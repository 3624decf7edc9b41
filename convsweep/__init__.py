"""convsweep: sweep conv-net architectures with Optuna, train with Lightning, track in MLflow.

The root package is deliberately tiny: the error family (`convsweep.errors`) and the
`python -m convsweep` entry point. The work lives in the mapped subpackages
`convsweep.search`, `convsweep.lightning_modules` and `convsweep.dashboards`, and the
shipped YAML in `convsweep.conf`.
"""

from __future__ import annotations

from convsweep.errors import ConvsweepError

__all__ = ["ConvsweepError"]
__version__ = "0.1.0"
