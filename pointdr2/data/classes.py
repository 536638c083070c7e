"""Class names (and S3DIS colours) of every dataset, defined once.

The order of each tuple *is* the label: label ``i`` means ``NAMES[i]``.
"""

from __future__ import annotations

# modelnet40_shape_names.txt of the official release (alphabetical; label = line index).
MODELNET40_CLASSES: tuple[str, ...] = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)

# ScanObjectNN's 15 categories in label order.
SCANOBJECTNN_CLASSES: tuple[str, ...] = (
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
    "bed", "pillow", "sink", "sofa", "toilet",
)

# S3DIS in the order PointNeXt/openpoints use. PointNet's original order swaps table/chair and
# sofa/bookcase; this explicit tuple is the one every .npy label written by `prepare s3dis` refers to.
S3DIS_CLASSES: tuple[str, ...] = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door", "chair", "table", "bookcase",
    "sofa", "board", "clutter",
)

# Raw annotation names that are not classes of their own.
S3DIS_ALIASES: dict[str, str] = {"stairs": "clutter"}

# One RGB colour (0..255) per S3DIS class, for visualisation.
S3DIS_COLORS: tuple[tuple[int, int, int], ...] = (
    (158, 218, 229),  # ceiling: pale cyan
    (152, 223, 138),  # floor: light green
    (174, 199, 232),  # wall: light blue
    (255, 187, 120),  # beam: light orange
    (140, 86, 75),  # column: brown
    (31, 119, 180),  # window: blue
    (214, 39, 40),  # door: red
    (255, 127, 14),  # chair: orange
    (44, 160, 44),  # table: green
    (148, 103, 189),  # bookcase: purple
    (227, 119, 194),  # sofa: pink
    (188, 189, 34),  # board: olive
    (127, 127, 127),  # clutter: grey
)

assert len(S3DIS_COLORS) == len(S3DIS_CLASSES)

# Synthetic object sets (pointdr2.data.synthetic). The "modelnet40-like" set uses 16 ModelNet40 names;
# the ScanObjectNN-like set uses the 15 ScanObjectNN names, so the two tasks differ in classes and clutter.
SYNTHETIC_MODELNET_CLASSES: tuple[str, ...] = (
    "airplane", "bed", "bench", "bookshelf", "bottle", "bowl", "chair", "cone",
    "cup", "desk", "lamp", "monitor", "sofa", "stool", "table", "toilet",
)
SYNTHETIC_SCANOBJECTNN_CLASSES: tuple[str, ...] = SCANOBJECTNN_CLASSES

# ShapeNetPart (shapenetcore_partanno_segmentation_benchmark_v0_normal): the 16 categories in label order with
# their synset offset ids (synsetoffset2category.txt) and the global part ids each owns (50 parts in all). The
# files' last column is the global part id; category label i owns parts SHAPENETPART_PARTS[i].
SHAPENETPART_CATEGORIES: tuple[str, ...] = (
    "Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife",
    "Lamp", "Laptop", "Motorbike", "Mug", "Pistol", "Rocket", "Skateboard", "Table",
)
SHAPENETPART_SYNSETS: tuple[str, ...] = (
    "02691156", "02773838", "02954340", "02958343", "03001627", "03261776", "03467517", "03624134",
    "03636649", "03642806", "03790512", "03797390", "03948459", "04099429", "04225987", "04379243",
)
_PART_COUNTS = (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)
SHAPENETPART_PARTS: tuple[tuple[int, ...], ...] = tuple(
    tuple(range(sum(_PART_COUNTS[:i]), sum(_PART_COUNTS[: i + 1]))) for i in range(len(_PART_COUNTS))
)
# Part names as "<Category>_<k>" (k-th part of the category): the release numbers parts, it does not name them.
SHAPENETPART_PART_NAMES: tuple[str, ...] = tuple(
    f"{cat}_{k}" for cat, parts in zip(SHAPENETPART_CATEGORIES, SHAPENETPART_PARTS) for k in range(len(parts))
)

assert len(SHAPENETPART_SYNSETS) == len(SHAPENETPART_CATEGORIES) == 16 and len(SHAPENETPART_PART_NAMES) == 50
