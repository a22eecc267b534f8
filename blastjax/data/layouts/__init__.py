"""Readers of the on-disk layouts users have, one module per layout:

  folder      the generic layout (labels.csv + one folder per embryo), see folder.py
  gomez2022   Gomez et al. 2022 as its archives extract
  common      errors, the build report, frame checks and record assembly they share

Frames are decoded by blastjax.data.frames. The names below are the package's API.
"""

from blastjax.data.layouts.common import (IMAGE_EXTENSIONS, LABEL_NAMES, InvalidEmbryo, LayoutError, Report,
                                          check_image, parse_label, safe_name)
from blastjax.data.layouts.folder import read_embryo_folder, read_folder_layout, read_label_rows
from blastjax.data.layouts.gomez2022 import GOMEZ_PLANES, gomez_patient_id, read_gomez2022

__all__ = ["IMAGE_EXTENSIONS", "LABEL_NAMES", "GOMEZ_PLANES", "InvalidEmbryo", "LayoutError", "Report",
           "check_image", "gomez_patient_id", "parse_label", "read_embryo_folder", "read_folder_layout",
           "read_gomez2022", "read_label_rows", "safe_name"]
