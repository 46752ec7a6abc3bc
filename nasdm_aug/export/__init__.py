"""Export a PatchStore (or a planned real/synthetic mix) to the layouts other tools read:
``run`` does the export, ``formats`` holds one record per output format."""

from nasdm_aug.export.formats import EXPORT_FORMATS, ExportFormat
from nasdm_aug.export.run import export, parse_type_map, resolve_type_map

__all__ = ["EXPORT_FORMATS", "ExportFormat", "export", "resolve_type_map", "parse_type_map"]
