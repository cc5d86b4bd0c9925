"""tmdafm: classify AFM images of 2-D transition metal dichalcogenide films and explain the models.

The library knows nothing about Dash. Entry points: :mod:`tmdafm_core.data` (readers, labels, splits, synthetic
data), the ``tmdafm`` command (:mod:`tmdafm_core.cli`).
"""

__version__ = "0.1.0"
