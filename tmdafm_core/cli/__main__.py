"""``python -m tmdafm_core.cli``: the ``tmdafm`` command."""

import sys

from . import main

sys.exit(main())
