"""The manifest: one COCO-format json per split, the only thing later stages read about a dataset.

Layout (COCO instances json plus two PDSL fields; pycocotools reads it as is)::

    {
      "info": {"pdsl_manifest": 1, "dataset": "voc2012", "split": "val",
               "format": "voc|coco|synthetic|folder", "image_root": "/abs/dir"},
      "images": [{"id": 7, "file_name": "rel/to/image_root.jpg", "height": H, "width": W,
                  "labels": [category ids present in the image]}],      # image-level labels
      "categories": [{"id": 1, "name": "aeroplane"}],
      "annotations": [COCO instance annotations: GT boxes and RLE masks, for evaluation only]
    }

Training reads only ``images[*].labels``; ``annotations`` may be empty (a custom folder) and are
used by evaluation and ``cue-report`` alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .io import read_data_file, write_json_atomic

MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """A loaded, validated manifest. Category *indices* are contiguous 0..C-1 in id order."""

    path: Path
    info: dict
    images: list[dict]
    categories: list[dict]
    annotations: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.categories = sorted(self.categories, key=lambda c: c["id"])
        self.cat_id_to_index = {c["id"]: i for i, c in enumerate(self.categories)}
        self.image_by_id = {img["id"]: img for img in self.images}
        self._anns_by_image: dict | None = None

    # -- identity -------------------------------------------------------------------------
    @property
    def dataset(self) -> str:
        return self.info.get("dataset", "unknown")

    @property
    def split(self) -> str:
        return self.info.get("split", "unknown")

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def image_root(self) -> Path:
        root = Path(self.info.get("image_root", "."))
        return root if root.is_absolute() else (self.path.parent / root)

    # -- per image --------------------------------------------------------------------------
    def image_path(self, img: dict | int) -> Path:
        if not isinstance(img, dict):
            img = self.image_by_id[img]
        return self.image_root / img["file_name"]

    def label_vector(self, image_id: int) -> np.ndarray:
        """``float32 [C]`` multi-hot image-level labels (the only supervision training sees)."""
        t = np.zeros(self.num_classes, dtype=np.float32)
        for cid in self.image_by_id[image_id]["labels"]:
            t[self.cat_id_to_index[cid]] = 1.0
        return t

    def annotations_of(self, image_id: int) -> list[dict]:
        if self._anns_by_image is None:
            self._anns_by_image = {}
            for a in self.annotations:
                self._anns_by_image.setdefault(a["image_id"], []).append(a)
        return self._anns_by_image.get(image_id, [])

    @property
    def has_gt(self) -> bool:
        return len(self.annotations) > 0

    def subset(self, images) -> "Manifest":
        """This manifest restricted to ``images`` (and their annotations)."""
        keep = {i["id"] for i in images}
        return Manifest(path=self.path, info=self.info, images=list(images),
                        categories=self.categories,
                        annotations=[a for a in self.annotations if a["image_id"] in keep])

    def mask_coverage(self) -> dict:
        """Which images mask metrics can score: ``{"images": ids whose every annotation has a
        ``segmentation`` (none, if no annotation has one), "skipped_instances": annotations
        without one, "skipped_images": images left out for them}``."""
        boxed = {a["image_id"] for a in self.annotations if not a.get("segmentation")}
        n_box = sum(1 for a in self.annotations if not a.get("segmentation"))
        if n_box == len(self.annotations):
            ids = set()
        else:
            ids = {img["id"] for img in self.images} - boxed
        return {"images": ids, "skipped_instances": n_box,
                "skipped_images": len({i for i in boxed if i in self.image_by_id})}

    def to_dict(self) -> dict:
        return {"info": self.info, "images": self.images, "categories": self.categories,
                "annotations": self.annotations}


def _fail(path, msg):
    raise DataError(f"manifest {path}: {msg}")


def validate_manifest_dict(d: dict, path="<memory>") -> None:
    """Raise one clear :class:`DataError` naming the field or image if ``d`` is not a manifest."""
    if not isinstance(d, dict):
        _fail(path, "top level must be a JSON object")
    for key in ("info", "images", "categories"):
        if key not in d:
            _fail(path, f"missing top-level field '{key}'")
    if not isinstance(d["categories"], list) or not d["categories"]:
        _fail(path, "'categories' must be a non-empty list")
    cat_ids = set()
    for i, c in enumerate(d["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            _fail(path, f"categories[{i}] needs 'id' and 'name'")
        if c["id"] in cat_ids:
            _fail(path, f"duplicate category id {c['id']}")
        cat_ids.add(c["id"])
    seen = set()
    for i, img in enumerate(d["images"]):
        for key in ("id", "file_name", "height", "width", "labels"):
            if key not in img:
                _fail(path, f"images[{i}] (id {img.get('id', '?')}) missing field '{key}'")
        if img["id"] in seen:
            _fail(path, f"duplicate image id {img['id']}")
        seen.add(img["id"])
        if int(img["height"]) <= 0 or int(img["width"]) <= 0:
            _fail(path, f"image {img['id']}: height/width must be positive")
        bad = [c for c in img["labels"] if c not in cat_ids]
        if bad:
            _fail(path, f"image {img['id']}: labels {bad} are not category ids")


def load_manifest(path: str | os.PathLike) -> Manifest:
    path = Path(path)
    d = read_data_file(path, "manifest", hint=" (create it with `cli.py prepare-data`)")
    validate_manifest_dict(d, path)
    return Manifest(path=path, info=d["info"], images=d["images"], categories=d["categories"],
                    annotations=d.get("annotations", []))


def save_manifest(d: dict, path: str | os.PathLike) -> Manifest:
    """Validate and write a manifest dict atomically; return it loaded."""
    d.setdefault("annotations", [])
    d["info"]["pdsl_manifest"] = MANIFEST_VERSION
    validate_manifest_dict(d, path)
    write_json_atomic(d, path)
    return load_manifest(path)
