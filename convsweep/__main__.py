"""python -m convsweep [COMMAND] [overrides]: the same CLI as the `convsweep` console script."""

from __future__ import annotations

import sys

from convsweep.search.cli import main

if __name__ == "__main__":
    sys.exit(main())
