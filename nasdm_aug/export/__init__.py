"""Export a PatchStore (or a planned real/synthetic mix) to the layouts other tools read:
``run`` does the export, ``formats`` holds one record per output format, ``options`` reads the
options of ``nasdm-aug export``."""

from nasdm_aug.export.formats import EXPORT_FORMATS, ExportFormat
from nasdm_aug.export.options import export_from_options, mix_from_options
from nasdm_aug.export.run import export, parse_type_map, resolve_type_map

__all__ = ["EXPORT_FORMATS", "ExportFormat", "export", "resolve_type_map", "parse_type_map", "export_from_options",
           "mix_from_options"]
