"""Volume input/output with exact geometry: NIfTI, NRRD, MetaImage and DICOM series."""

from medgen.io.readers import is_volume_file, read_volume
from medgen.io.volume import Volume, case_id_from_path
from medgen.io.writers import write_volume

__all__ = ["Volume", "read_volume", "write_volume", "is_volume_file", "case_id_from_path"]
