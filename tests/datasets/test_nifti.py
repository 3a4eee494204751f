"""medvtc.datasets.nifti: names, finding, checking, reading and writing NIfTI files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvtc.common.errors import UserError
from medvtc.datasets.nifti import (
    NIFTI_HEADER_BYTES,
    centred_affine,
    check_nifti_file,
    find_nifti_files,
    is_nifti_name,
    nifti_stem,
    one_line,
    read_nifti,
    save_nifti,
)


def test_one_line():
    assert one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert one_line(KeyError()) == "KeyError"  # no text: the type's name
    assert len(one_line(OSError("x" * 1000))) == 300


def test_names():
    assert is_nifti_name("a.nii") and is_nifti_name("A.NII.GZ") and is_nifti_name("b.nii.gz")
    assert not is_nifti_name("a.nii.zip") and not is_nifti_name("a.gz") and not is_nifti_name("nii")
    assert nifti_stem("/x/scan.nii.gz") == "scan"
    assert nifti_stem("scan.v2.NII") == "scan.v2"
    assert nifti_stem(Path("dir") / "img.png") == "img"


def test_find_nifti_files(tmp_path: Path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.nii.gz", "d/sub/a.nii", "d/notes.txt", "one.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    found = find_nifti_files([tmp_path / "d", tmp_path / "one.nii.gz"])
    assert found == [tmp_path / "d" / "b.nii.gz", tmp_path / "d" / "sub" / "a.nii", tmp_path / "one.nii.gz"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .nii or .nii.gz scans"):
        find_nifti_files([tmp_path / "empty"], "scan")
    with pytest.raises(UserError, match="missing.nii.gz does not exist"):
        find_nifti_files([tmp_path / "missing.nii.gz"])


def test_check_nifti_file(tmp_path: Path):
    with pytest.raises(UserError, match=r"CT volume .*gone\.nii\.gz: file not found"):
        check_nifti_file(tmp_path / "gone.nii.gz", "CT volume")
    folder = tmp_path / "folder.nii"
    folder.mkdir()
    with pytest.raises(UserError, match="not a file"):
        check_nifti_file(folder)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(UserError, match=r"x\.png: expected a NIfTI file named"):
        check_nifti_file(png)
    plain = tmp_path / "plain.nii.gz"
    plain.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="label .*plain.nii.gz is not a NIfTI file: not gzip-compressed"):
        check_nifti_file(plain, "label")
    short = tmp_path / "short.nii"
    short.write_bytes(b"\0" * (NIFTI_HEADER_BYTES - 1))
    with pytest.raises(UserError, match="shorter than a NIfTI header"):
        check_nifti_file(short)
    good = tmp_path / "good.nii.gz"
    good.write_bytes(gzip.compress(b"anything"))  # cheap checks only: decoding is read_nifti's
    assert check_nifti_file(good) == good


def test_centred_affine():
    aff = centred_affine((5, 8, 3), (1.5, 2.0, 4.0))
    assert aff.dtype == np.float64 and aff.shape == (4, 4)
    np.testing.assert_array_equal(np.diag(aff), [1.5, 2.0, 4.0, 1.0])
    centre = aff @ np.array([2.0, 3.5, 1.0, 1.0])  # the middle voxel is the world origin
    np.testing.assert_array_equal(centre, [0.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_save_then_read(tmp_path: Path, dtype):
    data = (np.arange(6 * 5 * 4).reshape(6, 5, 4) % 120).astype(dtype)
    aff = centred_affine(data.shape, (0.8, 0.9, 2.5))
    path = tmp_path / "new" / "folder" / "vol.nii.gz"
    save_nifti(path, data, aff)
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.dtype(dtype)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.header.get_xyzt_units() == ("mm", "sec")
    got, got_aff = read_nifti(path)
    assert got.dtype == np.float32 and np.array_equal(got, data.astype(np.float32))
    np.testing.assert_allclose(got_aff, aff, rtol=1e-6)  # the header stores float32
    again = tmp_path / "again.nii.gz"
    save_nifti(again, data, aff)
    assert again.read_bytes() == path.read_bytes()  # no timestamp in the gzip stream


def test_read_nifti_failures(tmp_path: Path):
    path = tmp_path / "cut.nii.gz"
    save_nifti(path, np.zeros((16, 16, 16), np.int16) + 7, np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"could not read CT volume .*cut\.nii\.gz: truncated or corrupt"):
        read_nifti(path, "CT volume")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header " * 40))
    with pytest.raises(UserError, match=r"junk\.nii\.gz"):
        read_nifti(junk)
    with pytest.raises(UserError, match="file not found"):
        read_nifti(tmp_path / "nothing.nii")
