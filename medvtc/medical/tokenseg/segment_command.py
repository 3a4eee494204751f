"""`medvtc segment --checkpoint DIR scan.nii.gz -o mask.nii.gz [--png]`.

One scan: the mask is written to `-o` (a .nii/.nii.gz file; default `<scan>_seg.nii.gz` beside
the scan), in the scan's own voxel grid with its affine and header (3D, uint8 class ids).
Several scans or a folder (searched recursively for .nii/.nii.gz): `-o` is a folder and each
mask is `<folder>/<scan name>.nii.gz`; a scan that cannot be read is reported at the end (exit
code 1) and the others are still segmented. `--png` also writes `<mask name>.png`: slices of
the preprocessed scan with the predicted mask and TokenSeg's kept tokens (boxes coloured by
level) drawn over them.

Every output is written atomically (a temporary file renamed into place) and only after the
scan was fully segmented, so a failure leaves no partial file; existing outputs are kept unless
`--overwrite` is given.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np

from medvtc.common.errors import UserError, report_failures
from medvtc.common.io import atomic_write_bytes
from medvtc.datasets.nifti import find_nifti_files, is_nifti_name, nifti_stem


def find_scans(inputs: list[str]) -> list[Path]:
    return find_nifti_files(inputs, "scan")


def _plan_outputs(scans: list[Path], output: str | None, many: bool) -> list[Path]:
    if not many:
        out = Path(output) if output else scans[0].with_name(nifti_stem(scans[0]) + "_seg.nii.gz")
        if out.is_dir():
            return [out / f"{nifti_stem(scans[0])}.nii.gz"]
        if not is_nifti_name(out.name):
            raise UserError(f"-o {out}: a mask is a NIfTI file, so name it *.nii.gz or *.nii (or give a folder)")
        return [out]
    if not output:
        raise UserError("several scans need -o FOLDER for their masks")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"-o {folder} is a file; several scans need a folder")
    outs = [folder / f"{nifti_stem(s)}.nii.gz" for s in scans]
    if len(set(outs)) != len(outs):
        raise UserError(f"two scans share a file name, so their masks would collide in {folder}")
    return outs


def mask_bytes(mask: np.ndarray, reference_path: Path, gz: bool) -> bytes:
    """A NIfTI file (bytes) holding `mask` with the reference scan's affine and header."""
    import nibabel as nib

    ref = nib.load(str(reference_path))
    header = ref.header.copy()
    img = type(ref)(mask.astype(np.uint8), ref.affine, header=header) if isinstance(ref, (nib.Nifti1Image, nib.Nifti2Image)) \
        else nib.Nifti1Image(mask.astype(np.uint8), ref.affine)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, float(mask.max()) if mask.size else 0
    img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    data = img.to_bytes()
    return gzip.compress(data, mtime=0) if gz else data


def draw_png(result, labels: dict[int, str], num_slices: int = 4) -> bytes:
    """PNG bytes: axial slices (last axis) of the preprocessed scan with the mask and the
    kept-token boxes that cross each slice."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    image = result.model_image[0]
    mask = result.model_mask
    depth = image.shape[2]
    fg = np.nonzero(mask.reshape(-1, depth).any(axis=0))[0]
    span = (fg.min(), fg.max()) if fg.size else (0, depth - 1)
    zs = np.unique(np.linspace(span[0], span[1], num_slices + 2)[1:-1].round().astype(int)) if span[1] > span[0] else [span[0]]
    fig, axes = plt.subplots(1, len(zs), figsize=(4 * len(zs), 4.4), squeeze=False)
    level_colours = {1: "red", 2: "orange", 3: "deepskyblue", 4: "blue"}
    class_colours = ["none", "yellow", "magenta", "lime", "white", "cyan", "pink", "gold"]
    cmap = ListedColormap(class_colours[1:])
    boxes = result.kept_boxes.numpy()
    levels = result.kept_levels.numpy()
    for ax, z in zip(axes[0], zs):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
        cls = mask[:, :, z].T
        overlay = np.ma.masked_where(cls == 0, cls.astype(float) - 1)
        ax.imshow(overlay, cmap=cmap, vmin=0, vmax=cmap.N - 1, alpha=0.4, origin="lower", interpolation="nearest")
        for box, lev in sorted(zip(boxes, levels), key=lambda t: -int(t[1])):  # fine tokens drawn last, on top
            if box[0, 2] <= z < box[1, 2]:
                lw, alpha = {1: (1.6, 0.95), 2: (1.1, 0.8)}.get(int(lev), (0.5, 0.35))  # coarse cells faint
                ax.add_patch(Rectangle((box[0, 0] - 0.5, box[0, 1] - 0.5), box[1, 0] - box[0, 0], box[1, 1] - box[0, 1],
                                       fill=False, lw=lw, ec=level_colours.get(int(lev), "white"), alpha=alpha))
        ax.set_title(f"slice {z} (axis 3)")
        ax.axis("off")
    names = ", ".join(f"{v} {class_colours[k % len(class_colours)]}" for k, v in sorted(labels.items()) if k)
    tokens = (f"; kept tokens: {len(boxes)} boxes over all windows (level 1 red, 2 orange, 3 light blue, 4 blue)"
              if len(boxes) else "")
    fig.suptitle(f"mask: {names}{tokens}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Atomic write, then the permissions a plain open() would give (the temporary file is 0600)."""
    atomic_write_bytes(path, data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def run_segment(checkpoint: str, inputs: list[str], output: str | None = None, png: bool = False, overwrite: bool = False) -> int:
    from tqdm.auto import tqdm

    from medvtc.medical.tokenseg.pipeline import Segmenter

    scans = find_scans(inputs)
    many = len(scans) > 1 or any(Path(i).is_dir() for i in inputs)
    outs = _plan_outputs(scans, output, many)
    if not overwrite:
        clash = next((o for o in outs if o.exists() or (png and o.with_name(nifti_stem(o) + ".png").exists())), None)
        if clash is not None:
            existing = clash if clash.exists() else clash.with_name(nifti_stem(clash) + ".png")
            raise UserError(f"{existing} already exists; pass --overwrite to replace it")
    segmenter = Segmenter.from_pretrained(checkpoint)
    failures: list[tuple[Path, str]] = []
    bar = tqdm(total=len(scans), desc="segment", unit="scan", disable=not many, dynamic_ncols=True, file=sys.stderr)
    for scan, out in zip(scans, outs):
        try:
            result = segmenter(scan)
            data = mask_bytes(result.mask, scan, out.name.lower().endswith(".gz"))
            picture = draw_png(result, segmenter.labels) if png else None
        except UserError as e:
            if not many:
                raise
            failures.append((scan, str(e)))
            bar.update(1)
            continue
        _write(out, data)
        if picture is not None:
            _write(out.with_name(nifti_stem(out) + ".png"), picture)
        bar.update(1)
        if not many:
            counts = ", ".join(f"{segmenter.labels.get(k, k)} {int((result.mask == k).sum()):,}" for k in sorted(segmenter.labels) if k)
            print(f"medvtc: mask written to {out} (voxels: {counts})", file=sys.stderr)
    bar.close()
    if many:
        done = len(scans) - len(failures)
        print(f"medvtc: {done} mask(s) written to {output}", file=sys.stderr)
    return report_failures(failures, len(scans), "scan")


__all__ = ["run_segment", "find_scans", "mask_bytes", "draw_png"]
