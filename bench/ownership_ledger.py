"""Cost of the output-ownership ledger (medgen.io.ownership) per output file, on a real volume.

Usage: python bench/ownership_ledger.py VOLUME.nii.gz [--repeat 20]

Prints the time to record a file (SHA-256 + one fsynced ledger line, paid once per output
written) and to check ownership by size + mtime (every rerun's skip check) or by re-hashing
(when the mtime changed, e.g. after a copy).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from medgen.io.ownership import Guard, file_digest


def _mean_ms(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", type=Path)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / args.volume.name
        shutil.copy(args.volume, out)
        guard = Guard(tmp)
        record = _mean_ms(lambda: guard.record(out, out.name), args.repeat)
        fast = _mean_ms(lambda: guard.owns(out), args.repeat)
        full = _mean_ms(lambda: file_digest(out), args.repeat)
        print(f"{args.volume.name} ({out.stat().st_size / 2**20:.2f} MiB): record {record:.1f} ms, "
              f"owns by size+mtime {fast:.2f} ms, owns by re-hash {full:.1f} ms")


if __name__ == "__main__":
    main()
