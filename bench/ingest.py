"""Convert the same DICOM series with medcl and with dcm2niix; print the time ratio and check
that the geometry is identical.

The series are real MRI voxels: the MNI ICBM152 2009 T1 template that nilearn ships (1 mm,
197 x 233 x 189), written as single-frame DICOM (int16 + rescale) in axial and oblique form.
Both sides start from a folder of DICOM files on disk (page cache warm) and end with an
uncompressed NIfTI written to disk:

* medcl: ``discover`` (read headers, group the series) + ``load_series`` (sort, check spacing,
  decode, rescale, affine) + ``nibabel.save``, in-process;
* dcm2niix: ``dcm2niix -z n -b n`` as a subprocess (its process start is part of its time).

Each is timed ``--repeat`` times, alternating; the medians are reported. Run: ``.venv/bin/python bench/ingest.py``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # tests/dicomwrite.py: the series writer

from medcl.config import DataConfig  # noqa: E402
from medcl.data import dicom  # noqa: E402
from dicomwrite import mni_block, rotation, write_series  # noqa: E402
from medcl.data.sources import discover  # noqa: E402

DCM2NIIX = Path(sys.executable).parent / "dcm2niix"


def medcl_convert(src: Path, out: Path) -> nib.Nifti1Image:
    found = discover([src], DataConfig())
    assert len(found.scans) == 1, (found.problems, found.skipped)
    data, affine = dicom.load_series(list(found.scans[0].members))
    img = nib.Nifti1Image(data, affine)
    nib.save(img, str(out / "medcl.nii"))
    return img


def dcm2niix_convert(src: Path, out: Path) -> nib.Nifti1Image:
    subprocess.run([str(DCM2NIIX), "-z", "n", "-b", "n", "-f", "ref", "-o", str(out), str(src)],
                   check=True, capture_output=True)
    return nib.load(str(out / "ref.nii"))


def timed_pair(src: Path, work: Path, repeat: int):
    """Median seconds of each converter, alternating runs so both see the same machine load."""
    times: dict[str, list[float]] = {"medcl": [], "dcm2niix": []}
    imgs = {}
    for i in range(repeat):
        for name, fn in (("dcm2niix", dcm2niix_convert), ("medcl", medcl_convert)):
            out = work / f"{name}{i}"
            out.mkdir()
            t0 = time.perf_counter()
            imgs[name] = fn(src, out)
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["medcl"]), statistics.median(times["dcm2niix"]), imgs["medcl"], imgs["dcm2niix"]


def geometry_diff(a: nib.Nifti1Image, b: nib.Nifti1Image) -> tuple[float, float]:
    """(max affine difference in mm, max voxel difference) after canonical reordering."""
    a, b = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.affine - b.affine).max()), float(np.abs(a.get_fdata() - b.get_fdata()).max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--step", type=int, default=1, help="take every step-th voxel of the template (1 = full 1 mm)")
    args = p.parse_args(argv)
    vol, aff = mni_block(step=args.step)
    series = {"axial": aff, "oblique": rotation((1.0, 2.0, 0.5), 17.0) @ aff}
    print(f"series: MNI ICBM152 T1, {vol.shape[0]}x{vol.shape[1]} pixels x {vol.shape[2]} slices, "
          f"median of {args.repeat} runs")
    print(f"{'series':<9} {'medcl s':>8} {'dcm2niix s':>10} {'ratio':>6} {'affine diff mm':>15} {'voxel diff':>11}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, affine in series.items():
            src = Path(tmp) / name / "dicom"
            write_series(vol, affine, src)
            work = Path(tmp) / name / "work"
            work.mkdir()
            dcm2niix_convert(src, Path(tempfile.mkdtemp(dir=work)))       # warm the page cache
            t_ours, t_ref, ours, ref = timed_pair(src, work, args.repeat)
            d_aff, d_vox = geometry_diff(ours, ref)
            ratio = t_ours / t_ref
            worst = max(worst, ratio)
            print(f"{name:<9} {t_ours:>8.3f} {t_ref:>10.3f} {ratio:>6.2f} {d_aff:>15.2e} {d_vox:>11.2e}")
            if d_aff > 1e-3:
                print(f"geometry differs from dcm2niix by {d_aff} mm", file=sys.stderr)
                return 1
    print(f"worst ratio medcl/dcm2niix: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
