"""Seconds per series: DICOMweb pull -> segment -> push SEG, vs the same from local files. Prints JSON.

A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) is started on loopback with a
temporary storage folder (:func:`medgen.io.dicomweb_testing.orthanc_server`) and given the
MRI-DIR MR DICOM subset (24 slices of 512x512). Each run segments that series with
``medgen segment``'s pipeline (a seeded, untrained 3D UNet segmenter bundle at 2 x 2 x 2.5 mm:
the model's cost is the same both ways, the difference is the transfer) and writes the NIfTI
mask, labels JSON and DICOM SEG:

* ``local``: from the DICOM folder on disk;
* ``dicomweb``: from the series' DICOMweb URL (WADO-RS pull into a temporary folder), then the SEG
  is stored back (STOW-RS, ``--push-seg``).

One warm-up run each (model loading, imports) is not counted. Usage::

    python bench/dicomweb.py --runs 5 [--data ../shared/data] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bundle(folder: Path) -> Path:
    import torch
    from monai.networks.nets import UNet

    from medgen.models.bundle import BundleSpec, save_bundle
    from medgen.models.input_spec import InputSpec
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [8, 16, 32], "strides": [2, 2],
              "num_res_units": 1}
    torch.manual_seed(0)
    spec = InputSpec(spacing=(2.0, 2.0, 2.5), a_min=-200, a_max=300, patch_size=(64, 64, 32))
    names = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left"}
    save_bundle(folder, BundleSpec(kind="segmenter", network={"name": "monai.UNet", "kwargs": kwargs},
                                   label_names=names, extra={"input": spec.to_dict()}), UNet(**kwargs))
    return folder


def _stats(values: list[float]) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3),
            "runs": [round(v, 3) for v in values]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", default=os.environ.get("MEDGEN_SAMPLE_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import pydicom

    from medgen.io.dicomweb import PASSWORD_ENV, USER_ENV
    from medgen.io.dicomweb_testing import orthanc_missing, orthanc_server, upload_folder
    from medgen.pipelines.segment import SegmentOptions, segment

    series = Path(args.data) / "mridir_phantom" / "mr_t2_dicom_subset"
    if orthanc_missing() or not series.is_dir():
        print(json.dumps({"skipped": orthanc_missing() or f"{series} not found"}))
        return 1
    head = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True)
    with tempfile.TemporaryDirectory(prefix="medgen-bench-dicomweb-") as tmp, orthanc_server(tmp) as server:
        tmp = Path(tmp)
        upload_folder(server, series)
        os.environ[USER_ENV], os.environ[PASSWORD_ENV] = server.user, server.password
        url = f"{server.dicomweb}/studies/{head.StudyInstanceUID}/series/{head.SeriesInstanceUID}"
        bundle = _bundle(tmp / "bundle")
        times: dict[str, list[float]] = {"local": [], "dicomweb": []}
        for i in range(args.runs + 1):
            for mode, source in (("local", str(series)), ("dicomweb", url)):
                options = SegmentOptions(segmenter=str(bundle), device=args.device, precision="fp32",
                                         push_seg=mode == "dicomweb")
                start = time.perf_counter()
                [report] = segment([source], tmp / f"{mode}_{i}" / "mask.nii.gz", options, dicom_seg="auto",
                                   mlflow=False)
                seconds = time.perf_counter() - start
                assert report.status == "ok", report.error
                if i:  # run 0 warms up
                    times[mode].append(seconds)
    result = {"bench": "dicomweb", "series": "MRI-DIR MR T2 subset, 24 x 512 x 512", "device": args.device,
              "segmenter": "untrained 3D UNet bundle at 2 x 2 x 2.5 mm (the same cost both ways)",
              "server": "Orthanc + DicomWeb plugin on loopback (Debian packages)",
              "seconds_per_series": {mode: _stats(v) for mode, v in times.items()},
              "dicomweb_overhead_median_s": round(statistics.median(times["dicomweb"])
                                                  - statistics.median(times["local"]), 3),
              "command": "python bench/dicomweb.py --runs %d --device %s" % (args.runs, args.device)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
