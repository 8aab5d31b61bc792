"""The stages' engines: train, pretrain the backbone, run inference, evaluate a run; train the
fully supervised Mask R-CNN ceiling (``supervised``).

These modules may import everything below them; in ``pdsl`` only the commands above them
(``pdsl.commands``, run by ``cli.py``) import them, and ``pipeline/`` and the tests do."""
