"""Volume input/output with exact geometry: NIfTI, NRRD, MetaImage, DICOM series and DICOM SEG."""

from medgen.io.dicom_seg import read_dicom_seg, write_dicom_seg
from medgen.io.dicom_write import write_dicom_series
from medgen.io.readers import is_volume_file, read_volume
from medgen.io.volume import Volume, case_id_from_path
from medgen.io.writers import write_volume

__all__ = ["Volume", "read_volume", "write_volume", "is_volume_file", "case_id_from_path",
           "write_dicom_series", "write_dicom_seg", "read_dicom_seg"]
