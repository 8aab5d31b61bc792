"""What annotation tools add to the VOC layout: CVAT's ``labelmap.txt`` and VOC XML boxes.

* ``labelmap.txt`` (CVAT "Segmentation mask 1.1"): one line per label, ``name:r,g,b:parts:actions``
  (``# label:color_rgb:parts:actions`` header). Its colours paint the RGB class masks of
  ``SegmentationClass/``; ``background`` is not a class. :func:`read_labelmap` gives the classes
  and :func:`class_lut` the map from a mask's colour (or palette index = line number) to a class.
* ``Annotations/<name>.xml`` (labelImg, CVAT "PASCAL VOC 1.1", VOC's own detection data): the
  image size and, per object, ``name``, ``bndbox`` (1-based inclusive pixel corners, VOC's
  convention: x1 = xmin - 1, x2 = xmax in 0-based continuous pixels) and ``difficult``.
  :func:`read_voc_xml` reads it; an image with boxes and no segmentation PNG becomes box-only GT.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..boxes import clip_box
from ..errors import DataError

#: VOC's void/border colour (index 255 of the VOC colour map), kept as void with a labelmap too
VOID_RGB = (224, 224, 192)


def read_labelmap(path: str | os.PathLike) -> list[tuple[str, tuple[int, int, int]]]:
    """``[(name, (r, g, b))]`` in file order, ``background`` included (the caller leaves it out
    of the classes). One :class:`DataError` naming the line for anything malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"labelmap {path}: cannot read ({e})") from None
    out, names, colours = [], set(), {}
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":")
        name = parts[0].strip()
        try:
            rgb = tuple(int(v) for v in parts[1].split(","))
        except (IndexError, ValueError):
            rgb = ()
        if not name or len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"labelmap {path}: line {k} {line.strip()!r} is not "
                            f"'name:r,g,b:parts:actions'")
        if name in names:
            raise DataError(f"labelmap {path}: label {name!r} appears twice (line {k})")
        if rgb in colours:
            raise DataError(f"labelmap {path}: line {k}: colour {rgb} is also label "
                            f"{colours[rgb]!r}'s")
        names.add(name)
        colours[rgb] = name
        out.append((name, rgb))
    if not [n for n, _ in out if n != "background"]:
        raise DataError(f"labelmap {path}: no labels besides background")
    return out


def labelmap_classes(labelmap) -> list[str]:
    """The class names of a labelmap: every label but ``background``, in file order."""
    return [n for n, _ in labelmap if n != "background"]


def labelmap_palette(labelmap) -> np.ndarray:
    """``uint8 [256, 3]`` palette: line i's colour at index i, VOC's void colour at 255 (unless a
    label uses it); other entries are unused (a colour no line has is refused when reading)."""
    pal = np.full((256, 3), -1, np.int64)
    for i, (_, rgb) in enumerate(labelmap):
        pal[i] = rgb
    if not any(tuple(rgb) == VOID_RGB for _, rgb in labelmap):
        pal[255] = VOID_RGB
    return pal


def class_lut(labelmap) -> np.ndarray:
    """``int64 [256]``: mask index (labelmap line) -> class id 1..C (0 background, 255 void, -1
    an index no line has)."""
    lut = np.full(256, -1, np.int64)
    lut[255] = 255
    classes = labelmap_classes(labelmap)
    for i, (name, _) in enumerate(labelmap):
        lut[i] = 0 if name == "background" else classes.index(name) + 1
    return lut


def _text(node, tag):
    child = node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def read_voc_xml(path: str | os.PathLike, image: str) -> dict:
    """``{"size": (H, W) or None, "objects": [{"name", "box": [x1, y1, x2, y2] 0-based continuous,
    "difficult": bool}]}`` from one VOC annotation file."""
    import xml.etree.ElementTree as ET

    who = f"image {image}: {path}"
    try:
        root = ET.parse(str(path)).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{who}: not a readable VOC XML file ({e})") from None
    size = None
    s = root.find("size")
    if s is not None:
        try:
            h, w = int(float(_text(s, "height") or 0)), int(float(_text(s, "width") or 0))
        except ValueError:
            raise DataError(f"{who}: <size> has non-numeric width/height") from None
        size = (h, w) if h > 0 and w > 0 else None            # labelImg may write 0
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise DataError(f"{who}: object {k} needs <name> and <bndbox>")
        try:
            x1, y1, x2, y2 = (float(_text(bb, t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise DataError(f"{who}: object {k} ({name}): <bndbox> needs numeric xmin, ymin, "
                            f"xmax, ymax") from None
        if x2 < x1 or y2 < y1:
            raise DataError(f"{who}: object {k} ({name}): bndbox [{x1:g} {y1:g} {x2:g} {y2:g}] "
                            f"is inverted (xmax < xmin or ymax < ymin)")
        diff = _text(obj, "difficult")
        objects.append({"name": name, "box": [x1 - 1.0, y1 - 1.0, x2, y2],
                        "difficult": diff not in (None, "", "0", "false", "False")})
    return {"size": size, "objects": objects}


def xml_class_names(voc: Path) -> list[str]:
    """Sorted object names of every ``Annotations/*.xml`` under ``voc`` (all splits, so every
    split of one export gets the same class list)."""
    names = set()
    for p in sorted((voc / "Annotations").glob("*.xml")):
        names.update(o["name"] for o in read_voc_xml(p, p.stem)["objects"])
    return sorted(names)


def box_annotation(box, image_id: int, category_id: int, difficult: bool, h: int, w: int):
    """A box-only COCO annotation (no ``segmentation``; ``iscrowd`` 1 for VOC's difficult
    objects, which detection protocols ignore), the box clipped to the image."""
    x1, y1, x2, y2 = clip_box(box, h, w)
    a = {"image_id": int(image_id), "category_id": int(category_id),
         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
         "iscrowd": int(bool(difficult))}
    if difficult:
        a["difficult"] = 1
    return a
