"""Object proposals: the per-image candidate boxes (and, for MCG, segments) every later stage
scores. One factory, :func:`make_source`, turns a spec string into a picklable source:

* ``"builtin"`` — selective search (OpenCV contrib) on the image, for datasets without MCG;
* ``"mcg:DIR"`` — published MCG ``.mat`` files, one per image (:mod:`.mcg`);
* ``"pickle:FILE"`` — a Detectron/PCL/OICR proposal pickle (:mod:`.pickled`);
* ``"boxes:DIR"`` — per-image files (.mat/.npy/.npz/.pkl/.txt) of boxes and optional scores;
* ``"fastrcnn:FILE"`` — Fast R-CNN's dataset-level selective-search ``.mat`` (:mod:`.files`).

File readers take ``box_format`` (x1y1x2y2 | y1x1y2x2 | xywh) and ``box_base`` (0 | 1): the
file's convention (:mod:`.convention`); ``boxes:`` defaults to x1y1x2y2 0-based, ``mcg:`` and
``fastrcnn:`` to their published 1-based y1x1y2x2.

Every source returns ``{"boxes": float32 [N,4] x1y1x2y2 0-based continuous pixels of the
original image, "scores": float32 [N]}`` sorted by score, at most ``max_proposals``, checked by
:func:`~.common.sanitize_proposals`; MCG ``-proposals`` files add ``"segments"``: ``uint8
[N, M, M]`` (255 inside the proposal's segment, in its box frame).
"""
from __future__ import annotations

from ..errors import DataError
from .common import DEFAULT_MAX_PROPOSALS, ProposalSource, sanitize_proposals

SPEC_FORMS = ("builtin", "mcg:DIR", "pickle:FILE", "boxes:DIR", "fastrcnn:FILE")

__all__ = ["make_source", "ProposalSource", "sanitize_proposals", "SPEC_FORMS",
           "DEFAULT_MAX_PROPOSALS"]


def make_source(spec: str, **kw) -> ProposalSource:
    """Build a proposal source from ``spec`` (``"builtin"``, ``"mcg:DIR"``, ``"pickle:FILE"``).

    Keyword arguments are the source's parameters (all take ``max_proposals``, ``min_size``;
    builtin: ``mode`` fast|quality, ``max_side``, ``method``, ``windows``; mcg: ``segments``,
    ``segment_size``; pickle: ``inclusive``; mcg, boxes, fastrcnn: ``box_format``,
    ``box_base``). Parameters given as None are left to the source's default.
    """
    import inspect

    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"proposal source {spec!r}: expected one of {', '.join(SPEC_FORMS)}")
    spec = spec.strip()
    kw = {k: v for k, v in kw.items() if v is not None}
    kind, sep, arg = spec.partition(":")
    kind = kind.lower()
    if kind == "builtin":
        from .builtin import BuiltinSource as cls
        if arg:       # "builtin:quality" as a shorthand for mode=quality
            kw.setdefault("mode", arg)
        args = ()
    elif kind in ("mcg", "pickle", "boxes", "fastrcnn"):
        if not arg:
            raise DataError(f"proposal source {spec!r}: '{kind}:' needs a path "
                            f"(accepted forms: {', '.join(SPEC_FORMS)})")
        if kind == "mcg":
            from .mcg import MCGSource as cls
        elif kind == "pickle":
            from .pickled import PickleSource as cls
        elif kind == "boxes":
            from .files import BoxFileSource as cls
        else:
            from .files import FastRCNNSource as cls
        args = (arg,)
    else:
        raise DataError(f"proposal source {spec!r}: unknown kind '{kind}' "
                        f"(accepted forms: {', '.join(SPEC_FORMS)})")
    allowed = [p.name for p in inspect.signature(cls.__init__).parameters.values()
               if p.kind == p.KEYWORD_ONLY]
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise DataError(f"proposal source {spec!r}: unknown parameter(s) {', '.join(bad)} "
                        f"(accepted: {', '.join(allowed)})")
    return cls(*args, **kw)
