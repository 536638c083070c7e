"""Preparation steps behind ``pointdr2 prepare DATASET`` (one module per dataset)."""

from pointdr2.data.prepare.modelnet40 import write_fps_cache
from pointdr2.data.prepare.s3dis import ConversionReport, convert_s3dis
from pointdr2.data.prepare.scanobjectnn import check_scanobjectnn
from pointdr2.data.prepare.shapenetpart import check_shapenetpart

__all__ = ["ConversionReport", "check_scanobjectnn", "check_shapenetpart", "convert_s3dis", "write_fps_cache"]
