"""The losses of PDSL (paper §3, eq. 1–8), one plain function per term.

Every function takes already-matched targets and returns a scalar (or the targets themselves for
``oicr_pseudo_labels``). Conventions used throughout:

* ``C`` foreground classes; class targets ``t_p`` are in ``0..C`` with ``0`` = background,
  so foreground class ``c`` (0-based column ``c`` of a ``[P, C]`` score matrix) is ``t_p = c + 1``.
* Boxes are ``x1y1x2y2`` in pixels of the resized image the network sees (one frame for all boxes
  of a call); masks ``[M, M]`` live in the frame of their own box.
* An image with nothing to learn from (no present class, no foreground proposal, no valid mask
  target) gives ``logits.sum() * 0``: exactly zero, but still attached to the graph so that
  backward works and every parameter receives a (zero) gradient (DDP needs that).

Normalisation (the paper writes plain sums; sums over 2,000 proposals and 784 pixels would make the
loss scale depend on the proposal count and the mask size, so we average, as the authors' code
(detectron2/OICR style) does):

* eq. 2: summed over classes as written (``reduction="sum"``), or averaged over them as the
  authors' code does (``WSL.MEAN_LOSS: True``, ``reduction="mean"``; the model's default).
* eq. 3: weighted CE and the weighted box loss are both divided by the number of proposals ``P``.
* eq. 5: BCE averaged over the ``M×M`` pixels of a mask, then over the proposals that take part.
* eq. 8: mean over the proposals that take part (as written, with ``n^p`` = those proposals).

Each function's keyword defaults are the paper's text; ``PDSLNet`` passes the authors' code's
choices (``pdsl/defaults.yaml``; the README's table lists both).
"""
from .detection import oicr_pseudo_labels, refinement_loss, wsddn_mil_loss
from .mask import (activation_correlation_loss, binarize_mask_targets,
                   class_agnostic_mask_loss, class_specific_mask_loss, detection_activation,
                   instance_activation, mask_self_training_loss)

__all__ = ["activation_correlation_loss", "binarize_mask_targets", "class_agnostic_mask_loss",
           "class_specific_mask_loss", "detection_activation", "instance_activation",
           "mask_self_training_loss", "oicr_pseudo_labels", "refinement_loss",
           "wsddn_mil_loss"]
