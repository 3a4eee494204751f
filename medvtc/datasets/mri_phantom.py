"""Embedded segmentation data in Medical Segmentation Decathlon layout: synthetic MRI phantoms,
and (optionally) the MNI152 template that nilearn ships.

`generate_mri_phantom(root, ...)` writes, atomically (all of it or nothing):

    root/dataset.json            MSD metadata: modalities {"0": "T1w", "1": "T2w"}, labels
                                 {"0": "background", "1": "organ", "2": "lesion"}, "training"
    root/imagesTr/phantom_NNN.nii.gz   float32 (X, Y, Z, C): one channel per modality (4D as
                                 in Task01_BrainTumour; 3D when there is one modality)
    root/labelsTr/phantom_NNN.nii.gz   uint8 (X, Y, Z)
    root/medvtc_splits.json      the fixed train / val / test cases
    root/medvtc_phantom.json     the generator's settings

Each case is drawn from `numpy.random.default_rng([seed, split, index])`, so cases do not depend
on each other or on the split sizes, and the same seed gives identical voxels. A case is a
body (an irregular ellipsoid with a subcutaneous fat shell) holding muscle-like parenchyma,
fluid-filled structures (dark on T1w, bright on T2w), a target organ (label 1, a lobulated
ellipsoid) and 1-3 lesions (label 2) mostly inside the organ, each one of:

- lobulated: a sphere whose radius swells in a few random directions (Gaussian bumps on the
  sphere of directions);
- spiculated: a core with 5-10 tapering spikes (cones) radiating from it;
- infiltrative: a sphere whose surface is displaced by a smooth random field (irregular margin),
  larger ones with a necrotic core (dark T1w, bright T2w).

`lesions="subtle"` (tokenseg's `data.dataset=phantom_subtle`) draws the same cases with lesions
made to tell token selections apart: radii (and spikes) scaled by `SUBTLE_LESION_SCALE` (0.45:
about 3-7 mm across instead of 8-15, a few voxels at 1.5 mm) and the lesion's signal moved
towards the organ's, keeping `SUBTLE_LESION_CONTRAST` (40 %) of their difference in each
modality. At the standard size and contrast every selection rule found the lesions equally well
(TokenSeg's boundary-aware selection, pooling and DivPrune within 0.1 Dice point); a lesion a
few voxels across with a faint edge is where keeping the tokens at a boundary should matter.

Partial-volume edges: every structure is a soft occupancy exp-sigmoid of a signed distance
(about a third of a voxel wide), intensities mix the tissues by occupancy, and labels are the
occupancy > 0.5. On top: per-tissue texture, a smooth multiplicative bias field (2nd-order
polynomial in log space, shared by the channels up to a small per-channel tilt) and Rician
noise.

`generate_mni152(root, ...)` writes the MNI152 2009 template that ships inside the nilearn wheel
(nothing is downloaded) in the same layout: the T1 image (`load_mni152_template`, skull-stripped)
and a label map from nilearn's grey and white matter probability maps (`load_mni152_gm_template`,
`load_mni152_wm_template`): 1 = grey matter where its probability is >= 0.5 and not below white
matter's, 2 = white matter where its probability is >= 0.5 and above grey matter's, 0 elsewhere
(CSF, background). It is ONE subject (an average brain), so its splits are parts of one volume:
the left hemisphere is the one training case; the right hemisphere, mirrored to the left's
orientation, is cut at its middle front-to-back and top-to-bottom into four blocks, the
anterior-superior one the validation case and the other three the test cases. Held-out metrics
therefore say how well a network trained on one hemisphere segments the other hemisphere of the
same brain; their intervals resample three regions of one brain, not subjects, and they say
nothing about other subjects, scanners or pathologies.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory
from medvtc.datasets.nifti import centred_affine, save_nifti
from medvtc.datasets.parallel import map_in_order, resolve_workers

MODALITIES = ("T1w", "T2w")
LABELS = {0: "background", 1: "organ", 2: "lesion"}
LESION_KINDS = ("lobulated", "spiculated", "infiltrative")
LESION_STYLES = ("standard", "subtle")
SUBTLE_LESION_SCALE = 0.45  # subtle lesions' size relative to the standard draw
SUBTLE_LESION_CONTRAST = 0.4  # share of the lesion-organ signal difference a subtle lesion keeps
DEFAULT_SHAPE = (64, 64, 64)
DEFAULT_SPACING = (1.5, 1.5, 1.5)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# (T1w, T2w) signal of each tissue, before per-case contrast jitter
TISSUES: dict[str, tuple[float, float]] = {
    "fat": (0.90, 0.70),
    "muscle": (0.45, 0.30),
    "fluid": (0.12, 0.95),
    "organ": (0.62, 0.42),
    "lesion": (0.40, 0.72),
    "necrosis": (0.18, 0.88),
}


# ------------------------------------------------------------------------------------------------
# Shapes: signed distances (mm, negative inside) on the voxel grid
# ------------------------------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _ellipsoid_sdf(xyz: np.ndarray, centre, radii, rot: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to a rotated ellipsoid: (|A(x-c)| - 1) * min radius."""
    local = np.einsum("ij,...j->...i", rot.T, xyz - np.asarray(centre))
    q = np.sqrt(np.sum((local / np.asarray(radii)) ** 2, axis=-1))
    return (q - 1.0) * float(np.min(radii))


def _direction_field(xyz: np.ndarray, centre) -> tuple[np.ndarray, np.ndarray]:
    d = xyz - np.asarray(centre)
    r = np.sqrt(np.sum(d * d, axis=-1))
    return d / np.maximum(r, 1e-6)[..., None], r


def _lobulated_sdf(xyz, centre, radius, lobes: list[tuple[np.ndarray, float, float]]) -> np.ndarray:
    u, r = _direction_field(xyz, centre)
    rad = np.full(r.shape, float(radius))
    for direction, amp, width in lobes:
        rad = rad + radius * amp * np.exp((u @ direction - 1.0) / width)
    return r - rad


def _spiculated_sdf(xyz, centre, radius, spikes: list[tuple[np.ndarray, float, float]]) -> np.ndarray:
    d = xyz - np.asarray(centre)
    sdf = np.sqrt(np.sum(d * d, axis=-1)) - radius
    for direction, length, base in spikes:
        t = d @ direction  # along the spike
        perp = np.sqrt(np.maximum(np.sum(d * d, axis=-1) - t * t, 0.0))
        frac = np.clip(t / length, 0.0, 1.0)
        spike = perp - base * (1.0 - frac)
        spike = np.where((t >= 0) & (t <= length), spike, np.inf)
        sdf = np.minimum(sdf, spike)
    return sdf


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.normal(size=tuple(shape)), sigma_vox, mode="wrap")
    return n / max(float(n.std()), 1e-9)


def _occupancy(sdf: np.ndarray, width_mm: float) -> np.ndarray:
    """Soft partial-volume occupancy in [0, 1] from a signed distance (logistic edge)."""
    return 1.0 / (1.0 + np.exp(np.clip(sdf / width_mm, -50, 50)))


# ------------------------------------------------------------------------------------------------
# One case
# ------------------------------------------------------------------------------------------------
def sample_case(rng: np.random.Generator, fov_mm: Sequence[float], lesions: str = "standard") -> dict[str, Any]:
    """Random parameters of one phantom in a field of view `fov_mm` (centred on 0); `lesions`
    "subtle" makes the same draw's lesions smaller and fainter (module docstring)."""
    if lesions not in LESION_STYLES:
        raise UserError(f"phantom lesions {lesions!r}: expected one of {', '.join(LESION_STYLES)}")
    half = np.asarray(fov_mm, dtype=float) / 2
    body_radii = half * rng.uniform(0.78, 0.92, size=3)
    organ_radii = half * rng.uniform(0.28, 0.42, size=3)
    organ_centre = rng.uniform(-0.25, 0.25, size=3) * half
    drawn = []
    for _ in range(int(rng.integers(1, 4))):
        kind = LESION_KINDS[int(rng.integers(len(LESION_KINDS)))]
        radius = float(rng.uniform(0.08, 0.16) * half.min())
        # mostly inside the organ: a point within 60 % of its radii
        direction = _unit(rng.normal(size=3))
        centre = organ_centre + direction * organ_radii * rng.uniform(0.0, 0.6)
        lesion: dict[str, Any] = {"kind": kind, "centre": centre.tolist(), "radius": radius}
        if kind == "lobulated":
            lesion["lobes"] = [(_unit(rng.normal(size=3)).tolist(), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.1, 0.3)))
                               for _ in range(int(rng.integers(3, 6)))]
        elif kind == "spiculated":
            lesion["radius"] = radius * 0.7
            lesion["spikes"] = [(_unit(rng.normal(size=3)).tolist(), float(rng.uniform(1.4, 2.4) * radius),
                                 float(rng.uniform(0.18, 0.3) * radius)) for _ in range(int(rng.integers(5, 11)))]
        else:
            lesion["roughness"] = float(rng.uniform(0.15, 0.35))
            lesion["necrotic"] = bool(radius > 0.12 * half.min() and rng.random() < 0.6)
        drawn.append(lesion)
    fluids = []
    for _ in range(int(rng.integers(1, 3))):
        # tubes and cysts away from the organ: opposite side of the body
        side = -_unit(organ_centre + rng.normal(scale=0.1 * half.min(), size=3))
        centre = side * body_radii * rng.uniform(0.3, 0.6)
        radii = half * rng.uniform(0.05, 0.12, size=3)
        radii[int(rng.integers(3))] *= rng.uniform(1.5, 3.5)  # elongated: vessel-like
        fluids.append({"centre": centre.tolist(), "radii": radii.tolist(), "rot": _random_rotation(rng).tolist()})
    contrast = {t: [float(v * rng.uniform(0.88, 1.12)) for v in vals] for t, vals in TISSUES.items()}
    if lesions == "subtle":  # after every draw, so a subtle case is its standard twin made harder
        k = SUBTLE_LESION_SCALE
        for les in drawn:
            les["radius"] *= k
            if "spikes" in les:
                les["spikes"] = [(d, length * k, base * k) for d, length, base in les["spikes"]]
        for tissue in ("lesion", "necrosis"):
            contrast[tissue] = [o + SUBTLE_LESION_CONTRAST * (v - o) for v, o in zip(contrast[tissue], contrast["organ"])]
    return {
        "body_radii": body_radii.tolist(),
        "body_rot": _random_rotation(rng).tolist(),
        "fat_thickness": float(rng.uniform(0.06, 0.12)),
        "organ_centre": organ_centre.tolist(),
        "organ_radii": organ_radii.tolist(),
        "organ_rot": _random_rotation(rng).tolist(),
        "organ_lobes": [(_unit(rng.normal(size=3)).tolist(), float(rng.uniform(0.05, 0.15)), 0.4) for _ in range(3)],
        "lesions": drawn,
        "fluids": fluids,
        "contrast": contrast,
        "bias": rng.normal(scale=0.12, size=10).tolist(),
        "bias_tilt": rng.normal(scale=0.04, size=(3,)).tolist(),
        "noise": float(rng.uniform(0.015, 0.04)),
    }


def _bias_field(xyz_norm: np.ndarray, coeffs: Sequence[float]) -> np.ndarray:
    x, y, z = xyz_norm[..., 0], xyz_norm[..., 1], xyz_norm[..., 2]
    terms = [x, y, z, x * y, x * z, y * z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y * z]
    return np.exp(sum(c * t for c, t in zip(coeffs, terms)))


def render_case(
    case: dict[str, Any], rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
    num_modalities: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """-> (image float32 [X, Y, Z, C], label uint8 [X, Y, Z])."""
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=float)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)]
    xyz = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    width = 0.33 * float(sp.min())  # partial-volume edge width

    body_rot = np.asarray(case["body_rot"])
    body_radii = np.asarray(case["body_radii"])
    body_sdf = _ellipsoid_sdf(xyz, (0, 0, 0), body_radii, body_rot)
    body_sdf = body_sdf + 0.04 * body_radii.min() * _smooth_noise(rng, shape, 6.0)
    f_body = _occupancy(body_sdf, width)
    inner_sdf = body_sdf + case["fat_thickness"] * body_radii.min()
    f_inner = _occupancy(inner_sdf, width) * f_body

    fluid_sdf = np.full(shape, np.inf)
    for fl in case["fluids"]:
        fluid_sdf = np.minimum(fluid_sdf, _ellipsoid_sdf(xyz, fl["centre"], fl["radii"], np.asarray(fl["rot"])))
    f_fluid = _occupancy(fluid_sdf, width) * f_inner

    organ_radii = np.asarray(case["organ_radii"])
    organ_sdf = _ellipsoid_sdf(xyz, case["organ_centre"], organ_radii, np.asarray(case["organ_rot"]))
    u, _ = _direction_field(xyz, case["organ_centre"])
    for direction, amp, w in case["organ_lobes"]:
        organ_sdf = organ_sdf - organ_radii.min() * amp * np.exp((u @ np.asarray(direction) - 1.0) / w)
    f_organ = _occupancy(organ_sdf, width) * (f_inner - f_fluid).clip(0, 1)

    lesion_sdf = np.full(shape, np.inf)
    necrosis_sdf = np.full(shape, np.inf)
    for les in case["lesions"]:
        c, r = les["centre"], les["radius"]
        if les["kind"] == "lobulated":
            sdf = _lobulated_sdf(xyz, c, r, [(np.asarray(d), a, w) for d, a, w in les["lobes"]])
        elif les["kind"] == "spiculated":
            sdf = _spiculated_sdf(xyz, c, r, [(np.asarray(d), length, base) for d, length, base in les["spikes"]])
        else:
            d = np.sqrt(np.sum((xyz - np.asarray(c)) ** 2, axis=-1))
            sdf = d - r * (1.0 + les["roughness"] * _smooth_noise(rng, shape, max(1.0, 0.35 * r / sp.min())))
            if les["necrotic"]:
                necrosis_sdf = np.minimum(necrosis_sdf, d - 0.45 * r)
        lesion_sdf = np.minimum(lesion_sdf, sdf)
    f_lesion = _occupancy(lesion_sdf, width) * (f_inner - f_fluid).clip(0, 1)
    f_necrosis = _occupancy(necrosis_sdf, width) * f_lesion

    # tissue fractions (sum to f_body); the lesion replaces whatever it grows into
    frac = {
        "fat": f_body - f_inner,
        "fluid": f_fluid * (1 - f_lesion),
        "lesion": f_lesion - f_necrosis,
        "necrosis": f_necrosis,
        "organ": (f_organ - f_organ * f_lesion).clip(0, 1),
    }
    frac["muscle"] = (f_inner - f_fluid * (1 - f_lesion) - f_lesion - frac["organ"]).clip(0, 1)

    label = np.zeros(shape, dtype=np.uint8)
    label[f_organ > 0.5] = 1
    label[f_lesion > 0.5] = 2

    norm = xyz / np.maximum(np.abs(xyz).max(axis=(0, 1, 2)), 1e-6)
    bias = _bias_field(norm, case["bias"])
    channels = []
    for m in range(num_modalities):
        signal = np.zeros(shape)
        for tissue, f in frac.items():
            vals = case["contrast"][tissue]
            level = vals[m % len(vals)] if m < 2 else vals[m % 2] * (0.8 + 0.1 * m)
            texture = 1.0 + 0.04 * _smooth_noise(rng, shape, 1.5)
            signal += f * level * texture
        tilt = np.exp(case["bias_tilt"][m % 3] * norm[..., m % 3])
        signal = signal * bias * tilt
        sigma = case["noise"]
        noisy = np.sqrt((signal + rng.normal(scale=sigma, size=shape)) ** 2 + rng.normal(scale=sigma, size=shape) ** 2)
        channels.append((noisy * 1000.0).astype(np.float32))
    image = np.stack(channels, axis=-1)
    return image, label


def _dataset_json(name: str, description: str, modalities: Sequence[str], labels: dict[int, str], cases: list[str]) -> dict:
    return {
        "name": name,
        "description": description,
        "reference": "medvtc (generated locally, deterministic from a seed)",
        "licence": "Apache-2.0",
        "release": "1.0",
        "tensorImageSize": "4D" if len(modalities) > 1 else "3D",
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [],
    }


def _write_case(root: Path, seed: int, shape: tuple[int, ...], spacing: tuple[float, ...], num_modalities: int,
                lesions: str, job: tuple[str, int, int]) -> None:
    """Draw case `index` of split `split_id` and write its image and label `name` under `root`.
    One job of `generate_mri_phantom`, run in this process or a worker."""
    name, split_id, index = job
    fov = np.asarray(shape) * np.asarray(spacing)
    affine = centred_affine(shape, spacing)
    case = sample_case(np.random.default_rng([seed, split_id, index, 0]), fov, lesions)
    image, label = render_case(case, np.random.default_rng([seed, split_id, index, 1]), shape, spacing, num_modalities)
    save_nifti(root / "imagesTr" / f"{name}.nii.gz", image if image.shape[-1] > 1 else image[..., 0], affine)
    save_nifti(root / "labelsTr" / f"{name}.nii.gz", label, affine)


def generate_mri_phantom(
    root: str | Path,
    num_train: int = 40,
    num_val: int = 8,
    num_test: int = 16,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    num_modalities: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    lesions: str = "standard",
) -> Path:
    """Write the synthetic MRI set in MSD layout under `root` (see the module docstring; `lesions`:
    "standard" or "subtle").
    `workers` processes render and write the cases (None, the default: one per core this process
    may use; 1: all in this process); the files are the same bytes with any number."""
    from tqdm import tqdm

    root = Path(root)
    if root.exists() and not overwrite:
        raise UserError(f"{root} already exists; pass --overwrite to replace it, or choose another data.root")
    for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"{name}={n!r}: expected a non-negative integer")
    if num_train == 0 or num_test == 0:
        raise UserError("the phantom set needs at least one train and one test case")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise UserError(f"phantom shape {shape}: expected three sides >= 8 voxels")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise UserError(f"phantom spacing {spacing}: expected three positive voxel sizes in mm")
    if not 1 <= int(num_modalities) <= 4:
        raise UserError(f"num_modalities={num_modalities}: expected 1 to 4")
    if lesions not in LESION_STYLES:
        raise UserError(f"phantom lesions {lesions!r}: expected one of {', '.join(LESION_STYLES)}")
    modalities = [*MODALITIES, "FLAIR", "T1gd"][: int(num_modalities)]
    plan = [(s, i) for s, n in (("train", num_train), ("val", num_val), ("test", num_test)) for i in range(n)]
    jobs = [(f"phantom_{number:03d}", SPLIT_IDS[split], index) for number, (split, index) in enumerate(plan, start=1)]
    workers = resolve_workers(workers, len(jobs))
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    cases = [name for name, _, _ in jobs]
    with atomic_directory(root, overwrite=overwrite) as tmp:
        write = partial(_write_case, tmp, int(seed), shape, spacing, int(num_modalities), lesions)
        with tqdm(total=len(jobs), desc="MRI phantom", unit="vol", disable=not progress) as bar:
            map_in_order(write, jobs, workers, bar.update)
        for (split, _), name in zip(plan, cases):
            splits[split].append(f"./imagesTr/{name}.nii.gz")
        meta = _dataset_json(
            "MRIPhantom", "Synthetic MRI-like volumes with an organ and irregular (lobulated, spiculated, infiltrative) "
            "lesions, partial-volume edges, bias field and Rician noise, written by medvtc", modalities, LABELS, cases,
        )
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "medvtc_splits.json").write_text(json.dumps(splits, indent=2) + "\n")
        settings = {"generator": "medvtc.datasets.mri_phantom", "seed": int(seed), "shape": list(shape),
                    "spacing": list(spacing), "num_modalities": int(num_modalities),
                    "num_train": num_train, "num_val": num_val, "num_test": num_test, "lesions": lesions}
        (tmp / "medvtc_phantom.json").write_text(json.dumps(settings, indent=2) + "\n")
    return root


MNI152_BLOCKS = ("anterior_superior", "anterior_inferior", "posterior_superior", "posterior_inferior")
MNI152_LABELS = {0: "background", 1: "grey matter", 2: "white matter"}


def generate_mni152(root: str | Path, resolution: int = 2, overwrite: bool = False) -> Path:
    """Write nilearn's MNI152 template with GM/WM labels in MSD layout (see the module docstring:
    one subject; left hemisphere = train, right hemisphere blocks = val (anterior-superior) and
    test (the other three)). The template files ship inside the nilearn wheel: nothing is
    downloaded."""
    root = Path(root)
    if root.exists() and not overwrite:
        raise UserError(f"{root} already exists; pass --overwrite to replace it, or choose another data.root")
    if resolution not in (1, 2):
        raise UserError(f"the mni152 dataset's resolution is 1 or 2 (mm), got {resolution!r}")
    try:
        import nibabel as nib
        from nilearn import datasets as nds
    except ImportError as exc:  # a dependency, but keep the message clear if it is missing
        raise UserError(f"the mni152 dataset needs nilearn ({exc}); pip install nilearn") from None
    t1 = nds.load_mni152_template(resolution=resolution)
    gm = np.asarray(nds.load_mni152_gm_template(resolution=resolution).get_fdata())
    wm = np.asarray(nds.load_mni152_wm_template(resolution=resolution).get_fdata())
    image = np.asarray(t1.get_fdata(), dtype=np.float32) * 1000.0
    label = np.zeros(image.shape, dtype=np.uint8)
    label[(gm >= 0.5) & (gm >= wm)] = 1
    label[(wm >= 0.5) & (wm > gm)] = 2
    affine = np.asarray(t1.affine, dtype=float)
    codes = nib.aff2axcodes(affine)
    if codes != ("R", "A", "S"):
        raise UserError(f"nilearn's MNI152 template has axes {''.join(codes)}; this writer expects RAS")
    # the mid-sagittal plane: the voxel column nearest world x = 0
    mid = int(round(np.linalg.solve(affine, [0.0, 0.0, 0.0, 1.0])[0]))
    left_img, left_lab = image[:mid], label[:mid]
    right_img, right_lab = image[mid:][::-1], label[mid:][::-1]  # mirrored: same orientation as the left half
    y_mid, z_mid = right_img.shape[1] // 2, right_img.shape[2] // 2
    ys = {"anterior": slice(y_mid, None), "posterior": slice(0, y_mid)}  # axis 1 runs posterior -> anterior
    zs = {"superior": slice(z_mid, None), "inferior": slice(0, z_mid)}  # axis 2 runs inferior -> superior
    cases = [("mni152_left_hemisphere", left_img, left_lab)]
    for block in MNI152_BLOCKS:
        ap, si = block.split("_")
        cut = (slice(None), ys[ap], zs[si])
        cases.append((f"mni152_right_{block}", right_img[cut], right_lab[cut]))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    names = [name for name, _, _ in cases]
    with atomic_directory(root, overwrite=overwrite) as tmp:
        for name, img, lab in cases:
            aff = centred_affine(img.shape, spacing)
            save_nifti(tmp / "imagesTr" / f"{name}.nii.gz", np.ascontiguousarray(img), aff)
            save_nifti(tmp / "labelsTr" / f"{name}.nii.gz", np.ascontiguousarray(lab), aff)
        meta = _dataset_json(
            "MNI152", "ONE subject: nilearn's MNI152 2009 T1 template with grey / white matter labels from its "
            "probability maps (>= 0.5); the left hemisphere trains, blocks of the mirrored right hemisphere validate "
            "(anterior-superior) and test (the other three)", ["T1w"], MNI152_LABELS, names,
        )
        meta["reference"] = "nilearn.datasets.load_mni152_template / _gm_template / _wm_template (ICBM 2009 template)"
        meta["licence"] = "as distributed with nilearn (the ICBM 2009 template's terms)"
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        splits = {"train": [f"./imagesTr/{names[0]}.nii.gz"], "val": [f"./imagesTr/{names[1]}.nii.gz"],
                  "test": [f"./imagesTr/{n}.nii.gz" for n in names[2:]]}
        (tmp / "medvtc_splits.json").write_text(json.dumps(splits, indent=2) + "\n")
        settings = {"generator": "medvtc.datasets.mri_phantom.generate_mni152", "resolution": resolution,
                    "one_subject": True, "split": "train: left hemisphere; val / test: blocks of the mirrored right one"}
        (tmp / "medvtc_phantom.json").write_text(json.dumps(settings, indent=2) + "\n")
    return root


__all__ = ["generate_mri_phantom", "generate_mni152", "MNI152_BLOCKS", "MNI152_LABELS", "sample_case", "render_case", "MODALITIES", "LABELS"]
