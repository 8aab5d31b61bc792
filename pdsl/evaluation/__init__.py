"""Scoring a run: COCO metrics, the VOC protocol, CorLoc and image-level mAP, the report.

Works on a manifest and predictions; never imports :mod:`pdsl.engine`."""
