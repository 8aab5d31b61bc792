"""PDSL: Parallel Detection-and-Segmentation Learning for weakly supervised instance segmentation.

Library layer, top down: ``commands`` (the click commands ``cli.py`` runs) -> ``engine`` (runs a
stage: train, pretrain, inference, evaluate a run) -> ``evaluation`` (scores a run) -> ``cues``
(``pdsl.cues.store`` is the one contract between the offline pipeline and the trainer),
``datasets`` -> manifest, config, proposals -> model -> losses, boxes, errors. No module imports
from a layer above it.
It knows nothing of Snakemake; ``pipeline/`` and ``cli.py`` call into it.
"""

__version__ = "0.1.0"
