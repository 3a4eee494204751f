"""`medvtc report --checkpoint DIR scan.nii.gz [more scans or folders] [-o OUT]`.

One volume: the report is printed (or written to `-o file.txt`). Several volumes or a folder
(searched recursively for .nii/.nii.gz): a progress bar, then the reports printed, or written to
`-o reports.csv` (VolumeName, Report) or `-o folder/` (one <volume>.txt each). A volume that
cannot be read is reported at the end and the others still get their reports; the exit code is
then 1. Outputs are written atomically and an existing output is never overwritten unless
`--overwrite` is given.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from medvtc.common.errors import UserError, report_failures
from medvtc.common.io import atomic_write_text
from medvtc.datasets.nifti import find_nifti_files, nifti_stem
from medvtc.medical.ct_report.pipeline import CTReportGenerator


def find_volumes(inputs: list[str]) -> list[Path]:
    return find_nifti_files(inputs, "CT volume")


def _check_output(output: Path, n_volumes: int, overwrite: bool) -> str:
    """Which kind of output `-o` asks for: "csv", "file" or "dir"."""
    kind = "csv" if output.suffix.lower() == ".csv" else ("file" if n_volumes == 1 and not output.is_dir() else "dir")
    if kind in ("csv", "file") and output.exists() and not overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it")
    if kind == "dir" and output.exists() and not output.is_dir():
        raise UserError(f"{output} is a file; several reports need a folder (or a .csv file) for -o")
    return kind


def run_report(checkpoint: str, inputs: list[str], output: str | None = None, num_beams: int = 1,
               max_new_tokens: int = 256, batch_size: int = 4, overwrite: bool = False) -> int:
    import torch
    from tqdm.auto import tqdm

    volumes = find_volumes(inputs)
    out_path = Path(output) if output else None
    kind = _check_output(out_path, len(volumes), overwrite) if out_path else None
    if kind == "dir":
        clashes = [out_path / f"{nifti_stem(v)}.txt" for v in volumes if (out_path / f"{nifti_stem(v)}.txt").exists()]
        if clashes and not overwrite:
            raise UserError(f"{clashes[0]} already exists; pass --overwrite to replace reports in {out_path}")
    generator = CTReportGenerator.from_pretrained(checkpoint)

    reports: dict[Path, str] = {}
    failures: list[tuple[Path, str]] = []
    bar = tqdm(total=len(volumes), desc="report", unit="volume", disable=len(volumes) == 1, dynamic_ncols=True, file=sys.stderr)
    for start in range(0, len(volumes), batch_size):
        chunk, pixels = [], []
        for v in volumes[start : start + batch_size]:
            try:
                pixels.append(generator.preprocess(v))
                chunk.append(v)
            except UserError as e:
                failures.append((v, str(e)))
                bar.update(1)
        if chunk:
            texts = generator.generate_from_pixels(torch.stack(pixels), max_new_tokens=max_new_tokens, num_beams=num_beams)
            reports.update(zip(chunk, texts))
            bar.update(len(chunk))
            if kind == "dir":
                for v, text in zip(chunk, texts):
                    atomic_write_text(out_path / f"{nifti_stem(v)}.txt", text + "\n")
    bar.close()

    if out_path is None:
        for v in volumes:
            if v in reports:
                print(reports[v] if len(volumes) == 1 else f"{v.name}: {reports[v]}")
    elif kind == "file" and reports:
        atomic_write_text(out_path, next(iter(reports.values())) + "\n")
    elif kind == "csv" and reports:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["VolumeName", "Report"])
        for v in volumes:
            if v in reports:
                writer.writerow([v.name, reports[v]])
        atomic_write_text(out_path, buf.getvalue())
    if out_path is not None and reports:
        print(f"medvtc: {len(reports)} report(s) written to {out_path}", file=sys.stderr)
    return report_failures(failures, len(volumes), "volume")


__all__ = ["find_volumes", "run_report"]
