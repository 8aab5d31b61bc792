"""Instance targets for the fully supervised Mask R-CNN (``cli.py train-supervised``).

Where the targets come from:

* by default the training manifest's own ``annotations`` (GT boxes and masks): the ceiling;
* ``--annotations FILE``: a COCO instances json -- ``{"annotations": [...]}`` with optional
  ``images`` and ``categories``, or a bare list of annotation/result records (what ``cli.py
  eval`` writes as ``coco_instances_results.json``) -- whose image and category ids are the
  manifest's: e.g. PDSL's pseudo labels of the training split.

Each annotation needs ``image_id``, ``category_id`` and ``segmentation`` (RLE, compressed or
not, or polygons); ``bbox`` ([x, y, w, h]) is used when present, else the mask's bounding box.
Crowd annotations (``iscrowd: 1``) and degenerate ones (empty box) are not targets; images left
without any target are skipped (counts printed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import check_kept
from ..errors import DataError
from ..evaluation.coco import any_to_rle
from ..io import read_data_file, read_image
from ..sampling import sample_rng


def annotation_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """``uint8 [h, w]`` binary mask of one annotation."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(any_to_rle(ann["segmentation"], h, w))


def _check_segmentation(seg, h: int, w: int) -> str | None:
    """Why ``seg`` is not a usable segmentation of an ``h x w`` image (None if it is)."""
    if isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                              for p in seg):
            return "polygons must be lists of at least 3 (x, y) pairs"
        return None
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        return "segmentation must be polygons or an RLE dict with 'size' and 'counts'"
    if [int(v) for v in seg["size"]] != [h, w]:
        return f"RLE size {list(seg['size'])} is not the image's [height, width] [{h}, {w}]"
    return None


def load_instances(manifest, annotations=None) -> tuple[dict, dict]:
    """``({image id: [usable annotations]}, counts)`` from ``annotations`` (a path; None = the
    manifest's GT). Refuses, naming the file and the record, annotations whose image or category
    ids are not the manifest's, or that lack a usable ``segmentation``."""
    if annotations is None:
        where, records, doc = f"manifest {manifest.path}", list(manifest.annotations), {}
        if not records:
            raise DataError(f"{where}: no instance annotations to train a supervised Mask R-CNN "
                            f"on; pass --annotations with a COCO instances json for its images")
    else:
        where = f"annotations {annotations}"
        doc = read_data_file(annotations, "annotations")
        records = doc if isinstance(doc, list) else (doc.get("annotations")
                                                     if isinstance(doc, dict) else None)
        if not isinstance(records, list):
            raise DataError(f"{where}: expected a COCO instances json (an object with an "
                            f"'annotations' list) or a list of annotation records")
        doc = doc if isinstance(doc, dict) else {}
    images = manifest.image_by_id
    if isinstance(doc.get("images"), list):
        bad = [i.get("id") for i in doc["images"] if not isinstance(i, dict) or i.get("id") not in images]
        if bad:
            raise DataError(f"{where}: image ids {bad[:5]}{' ...' if len(bad) > 5 else ''} "
                            f"({len(bad)} of {len(doc['images'])}) are not images of manifest "
                            f"{manifest.path}")
        for i in doc["images"]:
            m = images[i["id"]]
            if "height" in i and (int(i["height"]), int(i["width"])) != (m["height"], m["width"]):
                raise DataError(f"{where}: image {i['id']} is {i['width']}x{i['height']}, in "
                                f"manifest {manifest.path} {m['width']}x{m['height']}")
    names = {c["id"]: c["name"] for c in manifest.categories}
    for c in doc.get("categories") or []:
        if names.get(c.get("id")) != c.get("name"):
            raise DataError(f"{where}: category {c.get('id')} {c.get('name')!r} is not a "
                            f"category of manifest {manifest.path} ({names})")
    missing = [a.get("image_id") if isinstance(a, dict) else a for a in records
               if not isinstance(a, dict) or a.get("image_id") not in images]
    if missing:
        raise DataError(f"{where}: annotations of image ids {sorted(set(map(str, missing)))[:5]} "
                        f"({len(missing)} of {len(records)} annotations) that are not images of "
                        f"manifest {manifest.path}: the image ids must be the manifest's")
    per_image, counts = {}, {"annotations": len(records), "crowd": 0, "degenerate": 0}
    for k, a in enumerate(records):
        if a.get("category_id") not in names:
            raise DataError(f"{where}: annotations[{k}] (image {a['image_id']}) has category_id "
                            f"{a.get('category_id')!r}, not one of the manifest's {sorted(names)}")
        img = images[a["image_id"]]
        why = _check_segmentation(a.get("segmentation"), int(img["height"]), int(img["width"]))
        if why:
            raise DataError(f"{where}: annotations[{k}] (image {a['image_id']}): {why}")
        if a.get("iscrowd", 0):
            counts["crowd"] += 1
            continue
        box = a.get("bbox")
        if box is None:
            from pycocotools import mask as mask_utils

            box = mask_utils.toBbox(any_to_rle(a["segmentation"], img["height"], img["width"])).tolist()
        if len(box) != 4 or not (box[2] >= 1 and box[3] >= 1):
            counts["degenerate"] += 1
            continue
        per_image.setdefault(a["image_id"], []).append({**a, "bbox": [float(v) for v in box]})
    return per_image, counts


class InstanceDataset(torch.utils.data.Dataset):
    """Images of a manifest with instance targets, as torchvision's detection models take them.

    ``dataset[(index, step, slot)]`` (what :class:`pdsl.sampling.TrainBatchSampler` yields) or
    ``dataset[index]`` → ``(image float32 [3, H, W] RGB in [0, 1], target)`` with target
    ``boxes float32 [N, 4]`` x1y1x2y2, ``labels int64 [N]`` (class index + 1; 0 is background),
    ``masks uint8 [N, H, W]``, ``image_id``. The only augmentation here is the horizontal flip
    (``input.flip``, p = 0.5, drawn from :func:`pdsl.sampling.sample_rng`: resumable); the model's
    transform draws the scale from ``input.train_scales`` per image.
    """

    def __init__(self, manifest, cfg, annotations=None, seed: int = 0, verbose: bool = True):
        self.manifest, self.flip, self.seed = manifest, bool(cfg.input.flip), int(seed)
        self.per_image, counts = load_instances(manifest, annotations)
        self.ids = [int(i["id"]) for i in manifest.images if i["id"] in self.per_image]
        self.source = str(annotations) if annotations else f"{manifest.path} (GT)"
        skipped = len(manifest.images) - len(self.ids)
        check_kept("train-supervised data", self.ids, manifest,
                   f", targets from {self.source}: {counts['annotations']} annotations "
                   f"({counts['crowd']} crowd and {counts['degenerate']} degenerate ones "
                   f"ignored); skipped {skipped} images without a usable annotation",
                   f"{self.source}: no image of manifest {manifest.path} has a usable "
                   f"(non-crowd, non-empty) annotation to train on", verbose)

    def __len__(self):
        return len(self.ids)

    def targets(self, index: int, flip: bool = False) -> dict:
        """The targets of image ``index`` (numpy: boxes, labels, masks) in its own frame."""
        image_id = self.ids[index]
        info = self.manifest.image_by_id[image_id]
        H, W = int(info["height"]), int(info["width"])
        anns = self.per_image[image_id]
        masks = np.stack([annotation_mask(a, H, W) for a in anns]).astype(np.uint8)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                         np.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, H)
        labels = np.array([self.manifest.cat_id_to_index[a["category_id"]] + 1 for a in anns],
                          np.int64)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if flip:
            masks = masks[:, :, ::-1]
            boxes = np.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], 1)
        return {"boxes": boxes[keep], "labels": labels[keep],
                "masks": np.ascontiguousarray(masks[keep]), "image_id": image_id}

    def __getitem__(self, key):
        index, step, slot = (key, 0, 0) if np.isscalar(key) else key
        index = int(index)
        flip = self.flip and bool(sample_rng(self.seed, step, slot, index).random() < 0.5)
        image_id = self.ids[index]
        info = self.manifest.image_by_id[image_id]
        image = read_image(self.manifest.image_path(info), image_id)
        if image.shape[:2] != (int(info["height"]), int(info["width"])):
            raise DataError(f"image {image_id} ({self.manifest.image_path(info)}) is "
                            f"{image.shape[1]}x{image.shape[0]} but the manifest says "
                            f"{info['width']}x{info['height']}")
        if flip:
            image = image[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))
        t = self.targets(index, flip)
        target = {"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"]),
                  "masks": torch.from_numpy(t["masks"]), "image_id": image_id}
        return x.float().div_(255.0), target


def collate_instances(samples):
    """``(images, targets)`` lists (torchvision detection models take lists)."""
    return [s[0] for s in samples], [s[1] for s in samples]


def annotations_identity(annotations) -> dict:
    """What ``run.json`` records about the targets: the file and its content hash, or GT."""
    if annotations is None:
        return {"targets": "manifest"}
    from ..io import file_sha1

    return {"targets": str(Path(annotations).resolve()), "targets_sha1": file_sha1(annotations)}
