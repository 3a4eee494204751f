"""NIfTI files: names, finding, checking, reading and writing them, shared by the readers
(`medvtc.datasets.ct_rate`, `medvtc.datasets.msd`), the phantom writers
(`medvtc.datasets.ct_phantom`, `medvtc.datasets.mri_phantom`) and the commands that take scans
(`medvtc report`, `medvtc segment`).

Every failure to read is a `UserError` that names the file and says what was expected; messages
are on one line (`one_line`), as the command line prints them.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from medvtc.common.errors import UserError

__all__ = [
    "NIFTI_HEADER_BYTES",
    "one_line",
    "is_nifti_name",
    "nifti_stem",
    "find_nifti_files",
    "check_nifti_file",
    "nifti_read_errors",
    "read_nifti",
    "centred_affine",
    "save_nifti",
]

NIFTI_HEADER_BYTES = 348  # a NIfTI-1 header; a shorter .nii file is truncated
_MESSAGE_CHARS = 300  # an error message quoted inside ours is cut to this length


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (whitespace runs collapsed), at most 300 characters; its
    type name when it has no text."""
    text = " ".join(str(exc).split())
    return text[:_MESSAGE_CHARS] if text else type(exc).__name__


def is_nifti_name(name: str) -> bool:
    """Whether a file name ends in .nii or .nii.gz (any case)."""
    low = name.lower()
    return low.endswith(".nii") or low.endswith(".nii.gz")


def nifti_stem(path: str | Path) -> str:
    """The file name without its .nii / .nii.gz suffix (any case)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def find_nifti_files(inputs: Sequence[str | Path], noun: str = "volume") -> list[Path]:
    """Command-line inputs -> files: a folder gives every .nii/.nii.gz under it (recursively,
    sorted), a file is taken as it is (a wrong one is reported by the reader, naming it). A
    missing path or a folder without NIfTI files is a UserError; `noun` names what is expected."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_nifti_name(p.name))
            if not found:
                raise UserError(f"folder {path} holds no .nii or .nii.gz {noun}s")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{path} does not exist (expected a .nii/.nii.gz {noun} or a folder of them)")
    return files


def check_nifti_file(path: str | Path, what: str = "image") -> Path:
    """Cheap checks before decoding: the file exists, is named .nii/.nii.gz, a .nii.gz is
    gzip-compressed and a .nii is at least a header long. `what` names the file in messages
    ("CT volume", "image", "label"). Returns the path, `~` expanded."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what} {p}: file not found")
    if not p.is_file():
        raise UserError(f"{what} {p}: not a file (expected a .nii or .nii.gz NIfTI file)")
    if not is_nifti_name(p.name):
        raise UserError(f"{what} {p}: expected a NIfTI file named *.nii or *.nii.gz")
    try:
        with open(p, "rb") as f:
            head = f.read(NIFTI_HEADER_BYTES)
    except OSError as exc:
        raise UserError(f"could not read {what} {p}: {one_line(exc)}") from exc
    if p.name.lower().endswith(".gz"):
        if head[:2] != b"\x1f\x8b":
            raise UserError(f"{what} {p} is not a NIfTI file: not gzip-compressed, so not a .nii.gz")
    elif len(head) < NIFTI_HEADER_BYTES:
        raise UserError(f"{what} {p} is not a NIfTI file: shorter than a NIfTI header (truncated)")
    return p


def nifti_read_errors() -> tuple[type[BaseException], ...]:
    """The exceptions nibabel raises on a file that is not NIfTI, truncated or corrupt."""
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    return OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError, MemoryError


def read_nifti(path: str | Path, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Voxels (float32, scaled by the header's slope/intercept) and affine (float64, 4x4) of a
    NIfTI file, after `check_nifti_file`; every failure is a UserError naming the file."""
    import nibabel as nib

    p = check_nifti_file(path, what)
    try:
        img = nib.load(str(p))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise UserError(f"could not read {what} {p}: nibabel read it as {type(img).__name__}, not NIfTI")
        data = img.get_fdata(dtype=np.float32)
        affine = np.array(img.affine, dtype=np.float64)
    except UserError:
        raise
    except nifti_read_errors() as exc:
        raise UserError(f"could not read {what} {p}: truncated or corrupt ({type(exc).__name__}: {one_line(exc)})") from exc
    return data, affine


def centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """The RAS affine of an axis-aligned grid: `spacing` mm on the diagonal, world origin at the
    centre of the field of view (float64, 4x4)."""
    aff = np.eye(4)
    for k in range(3):
        aff[k, k] = spacing[k]
        aff[k, 3] = -(shape[k] - 1) / 2.0 * spacing[k]
    return aff


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write `data` (stored in its own dtype) as NIfTI-1 with `affine` as both qform and sform
    (code 1, scanner) and millimetre units, creating the parent folder. The bytes depend only on
    the arguments (nibabel gzips without a timestamp), so a seed gives identical files."""
    import nibabel as nib

    path = Path(path)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
