"""The stages' engines: train, pretrain the backbone, run inference, evaluate a run; train the
fully supervised Mask R-CNN ceiling (``supervised``).

The top layer: these modules may import everything below them; nothing else in ``pdsl`` imports
them (``cli.py``, ``pipeline/`` and the tests do)."""
