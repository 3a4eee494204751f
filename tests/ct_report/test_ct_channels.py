"""HUIntervalChannelsd builds the window + HU-interval channels at the output size (issue 18 item
5): bit-identical to the former pipeline (every channel at the input's size, then MONAI's Resize),
with an extra peak that follows the output size, not the input's."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from medvtc.common.errors import UserError
from medvtc.datasets.ct_rate import (
    CTReportDataset,
    HUIntervalChannelsd,
    ct_input_channels,
    ct_transforms,
    load_ct_volume,
    preprocess_ct_array,
)

BINS = (-950.0, -700.0, -250.0, -30.0, 20.0, 100.0, 130.0, 1000.0)  # the ct-report default: 10 channels
WINDOW = (-1000.0, 1000.0)


def _reference(array: np.ndarray, spacing, spatial_size, mode="area", bins=BINS, target_spacing=None,
               affine=None, resize="resize") -> torch.Tensor:
    """The pipeline before the change, kept here verbatim: the window and every interval channel
    at the input's size (ScaleIntensityRange, bucketize + AsDiscrete one-hot, cat), then Resized."""
    from monai.data import MetaTensor
    from monai.transforms import (
        AsDiscrete,
        Compose,
        EnsureTyped,
        Orientationd,
        Resized,
        ResizeWithPadOrCropd,
        ScaleIntensityRange,
        Spacingd,
    )

    def channels(d):
        hu = d["image"]
        w = ScaleIntensityRange(a_min=WINDOW[0], a_max=WINDOW[1], b_min=0.0, b_max=1.0, clip=True)(hu)
        if bins:
            index = torch.bucketize(torch.as_tensor(hu, dtype=torch.float32), torch.tensor(bins), right=True)
            w = torch.cat([w, AsDiscrete(to_onehot=len(bins) + 1)(index).to(torch.float32)], 0)
        return {**d, "image": w}

    ts = [Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if target_spacing is not None:
        ts.append(Spacingd(keys="image", pixdim=target_spacing, mode="bilinear"))
    if resize == "crop_pad":
        ts.append(ResizeWithPadOrCropd(keys="image", spatial_size=spatial_size, mode="constant", value=-1024.0))
    ts.append(channels)
    if resize == "resize":
        ts.append(Resized(keys="image", spatial_size=spatial_size, mode=mode))
    ts.append(EnsureTyped(keys="image", data_type="tensor", dtype=torch.float32, track_meta=False))
    aff = np.diag([*spacing, 1.0]) if affine is None else affine
    image = MetaTensor(torch.from_numpy(array.astype(np.float32)[None]), affine=torch.as_tensor(aff, dtype=torch.float64))
    return Compose(ts)({"image": image})["image"]


def _phantom_hu(shape, seed=0) -> np.ndarray:
    """Smooth anatomy-like HU with every interval present, noise, and voxels exactly on the edges."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    hu = np.where(r < 0.9, 40.0, -1000.0) + np.where(r < 0.5, -850.0, 0.0) + 1500.0 * (r < 0.15)
    hu = hu + rng.normal(0, 60.0, shape)
    flat = hu.reshape(-1)
    picks = rng.choice(flat.size, size=len(BINS) * 20, replace=False)
    flat[picks] = np.repeat(BINS, 20)  # voxels on an edge belong to the interval above it
    return hu.astype(np.float32)


@pytest.mark.parametrize("mode", ["area", "trilinear", "nearest"])
@pytest.mark.parametrize("size", [(8, 6, 5), (13, 11, 7), (29, 20, 12), (40, 30, 20), (29, 7, 12)])
def test_channels_bit_identical_to_the_former_pipeline(mode, size):
    hu = _phantom_hu((29, 20, 12))
    old = _reference(hu, (1.5, 1.5, 2.5), size, mode)
    for array in (hu, np.asfortranarray(hu)):  # NIfTI voxels come in Fortran order and are not copied
        new = preprocess_ct_array(array, spacing=(1.5, 1.5, 2.5), spatial_size=size, resize_mode=mode, hu_bins=BINS)
        assert new.shape == old.shape == (10, *size) and new.dtype == torch.float32 and new.is_contiguous()
        assert torch.equal(new, old), float((new - old).abs().max())


@pytest.mark.parametrize("bins", [(), (-30.0, 130.0)])
def test_channels_bit_identical_other_paths(bins):
    hu = _phantom_hu((24, 18, 10), seed=1)
    lps = np.diag([-1.2, -1.2, 2.0, 1.0])  # flipped axes: Orientationd reorders before the channels
    kw = dict(affine=lps, hu_bins=bins)
    for size, extra, ref in (((10, 9, 6), {}, {}),
                             ((12, 12, 8), {"target_spacing": (2.0, 2.0, 3.0)}, {"target_spacing": (2.0, 2.0, 3.0)}),
                             ((30, 16, 12), {"resize": "crop_pad"}, {"resize": "crop_pad"})):
        new = preprocess_ct_array(hu, spatial_size=size, **kw, **extra)
        old = _reference(hu, None, size, bins=bins, affine=lps, **ref)
        assert new.shape == (ct_input_channels(bins), *size) and torch.equal(new, old)


@pytest.mark.parametrize("mode", ["area", "trilinear", "nearest"])
@pytest.mark.parametrize("size", [(13, 11, 7), (29, 20, 12)])  # resized, and at the input's own size
def test_float16_channels_are_the_float32_channels_rounded_once(mode, size):
    """dtype="float16" (data.dtype): the same values computed in float32 and rounded once, so
    bit-identical to the float32 output cast to float16, within 2**-12 of it (half a float16 step
    below 1), the indicators (0/1 without a resize) exact; half the bytes."""
    hu = _phantom_hu((29, 20, 12), seed=2)
    ref = _reference(hu, (1.5, 1.5, 2.5), size, mode)
    half = preprocess_ct_array(hu, spacing=(1.5, 1.5, 2.5), spatial_size=size, resize_mode=mode, hu_bins=BINS, dtype="float16")
    assert half.dtype == torch.float16 and half.shape == ref.shape and half.is_contiguous()
    assert torch.equal(half, ref.to(torch.float16))
    assert float((half.float() - ref).abs().max()) <= 2**-12
    if size == (29, 20, 12):
        assert torch.equal(half[1:].float(), ref[1:]) and set(half[1:].unique().tolist()) == {0.0, 1.0}
    assert half.element_size() * half.numel() * 2 == ref.element_size() * ref.numel()


def test_float16_through_every_entry_point(tmp_path):
    """load_ct_volume, ct_transforms and CTReportDataset give the same float16 tensor; the
    dataset's preprocessing key (its persistent cache's) names the dtype only when not float32,
    so caches made before keep theirs; an unknown dtype is a UserError naming it."""
    from medvtc.datasets.ct_rate import CTReportRecord
    from medvtc.datasets.nifti import save_nifti

    path = tmp_path / "ct.nii.gz"
    save_nifti(path, _phantom_hu((24, 20, 12)).astype(np.int16), np.diag([1.5, 1.5, 2.5, 1.0]))
    kw = dict(spatial_size=(12, 10, 6), hu_bins=BINS)
    ref = load_ct_volume(path, **kw)
    half = load_ct_volume(path, **kw, dtype="float16")
    assert ref.dtype == torch.float32 and torch.equal(half, ref.to(torch.float16))
    assert torch.equal(ct_transforms(**kw, dtype=torch.float16)({"image": str(path)})["image"], half)
    record = CTReportRecord("train_1_a_1.nii.gz", path, "f", "i", "", "")
    datasets = {d: CTReportDataset([record], **kw, dtype=d, persistent_cache=tmp_path / "cache") for d in ("float32", "float16")}
    assert "dtype" not in datasets["float32"].transform_args and datasets["float16"].transform_args["dtype"] == "float16"
    assert datasets["float32"].persistent_cache.key != datasets["float16"].persistent_cache.key
    for _ in range(2):  # computed, then read back from the persistent cache
        assert torch.equal(datasets["float16"][0]["image"], half) and torch.equal(datasets["float32"][0]["image"], ref)
    assert datasets["float16"].persistent_cache.hits == 1 and datasets["float16"].persistent_cache.misses == 1
    with pytest.raises(UserError, match="dtype 'bfloat16'"):
        load_ct_volume(path, **kw, dtype="bfloat16")


def test_transform_keeps_meta_and_checks_its_input():
    from monai.data import MetaTensor

    t = HUIntervalChannelsd(keys="image", window=WINDOW, bins=BINS, spatial_size=(4, 4, 2))
    image = MetaTensor(torch.zeros(1, 8, 8, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64)))
    out = t({"image": image})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (10, 4, 4, 2)
    assert torch.allclose(torch.diagonal(out.affine)[:3], torch.tensor([4.0, 4.0, 6.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[1, X, Y, Z\]"):
        t({"image": torch.zeros(2, 8, 8, 4)})
    with pytest.raises(UserError, match="resize_mode 'cubic'"):
        HUIntervalChannelsd(keys="image", window=WINDOW, mode="cubic")


_MEMORY_CHILD = r"""
import json, sys
import numpy as np
from medvtc.common.accounting import measure_peak_memory
from medvtc.datasets.ct_rate import preprocess_ct_array
shape, size, bins = json.loads(sys.argv[1])
hu = np.random.default_rng(0).uniform(-1100, 1500, shape).astype(np.float32)
preprocess_ct_array(hu[:16, :16, :8], spatial_size=(4, 4, 2), hu_bins=bins)  # warm up: imports, caches
out = []
print(json.dumps({"peak_mib": measure_peak_memory(lambda: out.append(preprocess_ct_array(hu, spatial_size=size, hu_bins=bins)))}))
"""


def test_peak_memory_follows_the_output_size():
    """256 x 256 x 128 HU (32 MiB) -> 10 channels at 64 x 64 x 32 (5 MiB). Building the channels
    at the input's size, as before, peaked about 1 GB above this; now the extra peak is the output
    plus a few input rows of channels (the HU array itself is already there)."""
    shape, size = (256, 256, 128), (64, 64, 32)
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps([shape, size, list(BINS)])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]
    out_mib = ct_input_channels(BINS) * np.prod(size) * 4 / 2**20
    rows = -(-shape[0] // size[0]) + 1  # input rows under one output row
    block_mib = ct_input_channels(BINS) * rows * shape[1] * shape[2] * 4 / 2**20
    bound = out_mib + 2 * block_mib + 32  # + 32 MiB: allocator and interpreter slack
    print(f"extra peak {peak:.1f} MiB, bound {bound:.1f} MiB")
    assert peak <= bound, f"extra peak {peak:.1f} MiB > {bound:.1f} MiB"


def test_scale_child_reports_where_the_peak_is(tmp_path):
    """The bench's full-size subprocess (`bench.scale`, scripts/ct_full_size_peak.py) at a tiny size:
    it reports the RSS before reading the CT, the peak after preprocessing and the input's size."""
    from medvtc.datasets.nifti import save_nifti
    from medvtc.medical.ct_report.bench import _scale_child, _scale_lines

    path = tmp_path / "ct.nii.gz"
    save_nifti(path, _phantom_hu((32, 32, 16)).astype(np.int16), np.diag([12.0, 12.0, 20.0, 1.0]))
    item = _scale_child({"volume": str(path), "size": [32, 32, 16], "patch": [8, 8, 8], "compressor": "pixel_shuffle",
                         "budget": 8, "seed": 0, "hu_bins": list(BINS), "dtype": "float16"})  # bench.scale_dtype's default
    assert item["ok"] and item["vit_tokens"] == 32 and item["input_mb"] == 10 * 32 * 32 * 16 * 2 / 2**20
    assert item["dtype"] == "float16" and 0 < item["base_rss_mb"] <= item["load_peak_rss_mb"] <= item["peak_rss_mb"]
    line = _scale_lines({"runs": [{**item, "path": "compressed", "size": [32, 32, 16]}]})[-1]
    assert line.startswith("- compressed (32, 32, 16): 32 ViT tokens") and "after read+preprocess" in line
    assert line.endswith(" MiB in float16)")
