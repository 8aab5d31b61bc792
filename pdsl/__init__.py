"""PDSL: Parallel Detection-and-Segmentation Learning for weakly supervised instance segmentation.

Library layer: datasets -> manifest, proposals, the cue cache (``pdsl.cues.store`` is the one
contract between the offline pipeline and the trainer), model, losses, training, evaluation.
It knows nothing of Snakemake; ``pipeline/`` and ``cli.py`` call into it.
"""

__version__ = "0.1.0"
