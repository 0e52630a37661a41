"""Phantom generator and corpus writer: determinism, file formats, measured anatomy."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from medssl_bench.downstream.phantoms import (
    FAMILIES, FAMILY_GENERATORS, MODALITY_OF, VOLUME_GENERATORS, sample_rng, synthesize_corpus,
)
from medssl_bench.downstream.phantoms.corpus import plan, volume_depths
from medssl_bench.downstream.phantoms.primitives import RAYLEIGH_CV
from medssl_bench.harness.errors import UserError

SIZE, N, SEED = 64, 48, 3
SEEDS = range(12)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus") / "c"
    return out, synthesize_corpus(out, N, SEED, size=SIZE)


def _first_pixels(root: Path, family: str) -> np.ndarray:
    path = sorted(p for p in (root / family).iterdir() if p.name != "dataset.json")[0]
    if path.suffix == ".dcm":
        return pydicom.dcmread(path).pixel_array
    if path.name.endswith(".nii.gz"):
        return np.asarray(nib.load(path).dataobj)
    return np.asarray(Image.open(path))


def _masks(fn, seed, size=96):
    masks: dict = {}
    img = fn(np.random.default_rng([seed, 42]), size, masks=masks)
    return img, {k: v > 0.5 for k, v in masks.items()}, masks


# ----------------------------------------------------------------------------- writer
def test_summary_counts_layout_and_manifests(corpus):
    out, summary = corpus
    assert summary["n_images"] == N == sum(summary["per_family"].values())
    assert list(summary["per_family"]) == FAMILIES and summary["seed"] == SEED
    assert summary["out"] == str(out)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert summary["files"] == len(written)
    assert not [p for p in written if p.name.endswith(".tmp")]
    for family in FAMILIES:
        manifest = json.loads((out / family / "dataset.json").read_text())
        assert manifest == {"dataset": family, "modality": MODALITY_OF[family], "synthetic": True,
                            "generator": "bench.phantoms", "generator_version": 1, "seed": SEED}
    for fam in ("ct", "mr"):
        depth = sum(nib.load(p).shape[2] for p in (out / fam).glob(f"{fam}_volume_*.nii.gz"))
        assert depth == summary["per_family"][fam]
    assert len(list((out / "xray").glob("xray_?????.dcm"))) == summary["per_family"]["xray"]
    for fam, ext in [("fundus", "png"), ("dermoscopy", "jpg"), ("ultrasound", "png"),
                     ("endoscopy", "jpg"), ("histology", "png")]:
        assert len(list((out / fam).glob(f"{fam}_?????.{ext}"))) == summary["per_family"][fam]


@pytest.mark.parametrize("n", [8, 13, 50, 257])
def test_plan_splits_exactly(n):
    counts = plan(n, FAMILIES)
    assert sum(counts.values()) == n and max(counts.values()) - min(counts.values()) <= 1
    for c in counts.values():
        depths = volume_depths(c)
        assert sum(depths) == c and all(1 <= d <= 8 for d in depths)


def test_same_seed_is_byte_identical_and_other_seed_differs(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    synthesize_corpus(again, N, SEED, size=SIZE)
    assert _hashes(out) == _hashes(again)
    other = tmp_path / "other"
    synthesize_corpus(other, N, SEED + 1, size=SIZE)
    for family in FAMILIES:
        assert not np.array_equal(_first_pixels(out, family), _first_pixels(other, family)), family


def test_rewrite_in_place_keeps_foreign_files_and_subset_matches(corpus, tmp_path):
    out, _ = corpus
    target = tmp_path / "c"
    synthesize_corpus(target, N, SEED, size=SIZE)
    (target / "fundus" / "notes.txt").write_text("keep me")
    calls: list[int] = []
    summary = synthesize_corpus(target, N, SEED, size=SIZE, progress=calls.append)
    assert sum(calls) == summary["n_images"] == N
    assert (target / "fundus" / "notes.txt").read_text() == "keep me"
    hashes = _hashes(target)
    del hashes["fundus/notes.txt"]
    assert hashes == _hashes(out)
    # files are keyed on (seed, family, index): a subset run reproduces the same 2D files
    sub = synthesize_corpus(tmp_path / "sub", 4, SEED, size=SIZE, families=["xray", "fundus"])
    assert sub["per_family"] == {"xray": 2, "fundus": 2} and sub["files"] == 6
    for rel in ("xray/xray_00001.dcm", "fundus/fundus_00001.png"):
        assert (tmp_path / "sub" / rel).read_bytes() == (out / rel).read_bytes()


def test_user_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        synthesize_corpus(blocker / "sub", 16, 0)
    with pytest.raises(UserError, match="at least one image per family"):
        synthesize_corpus(tmp_path / "a", 7, 0)
    with pytest.raises(UserError, match="unknown phantom families"):
        synthesize_corpus(tmp_path / "b", 8, 0, families=["pet"])
    assert synthesize_corpus(tmp_path / "c", 1, 0, size=32, families=["mr"])["n_images"] == 1


# ----------------------------------------------------------------------------- formats
def test_nifti_volumes(corpus):
    out, _ = corpus
    for fam in ("ct", "mr"):
        for path in (out / fam).glob("*.nii.gz"):
            img = nib.load(path)
            data = np.asarray(img.dataobj)
            assert data.dtype == np.int16 and data.shape[:2] == (SIZE, SIZE) and data.ndim == 3
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
            assert all(0.5 <= z <= 3.0 for z in img.header.get_zooms())
            assert data.std() > 10
    ct = np.asarray(nib.load(sorted((out / "ct").glob("*.nii.gz"))[0]).dataobj)
    assert ct.min() < -900 and ct.max() > 300  # air and bone present, HU scale


def test_dicom_xray_files_and_monochrome1_convention(corpus):
    out, _ = corpus
    uids, seen = set(), set()
    for i, path in enumerate(sorted((out / "xray").glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "DX" and ds.BitsAllocated == 16 and ds.BitsStored == 12
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        uids.add(ds.SOPInstanceUID)
        raw = ds.pixel_array.astype(np.int32)
        assert raw.shape == (SIZE, SIZE) and 0 <= raw.min() and raw.max() <= 4095
        seen.add(ds.PhotometricInterpretation)
        shown = 4095 - raw if ds.PhotometricInterpretation == "MONOCHROME1" else raw
        anatomy = FAMILY_GENERATORS["xray"](sample_rng(SEED, "xray", i), SIZE).astype(np.int32)
        assert np.array_equal(shown, anatomy)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert np.corrcoef((4095 - raw).ravel(), anatomy.ravel())[0, 1] > 0.9
            assert np.corrcoef(raw.ravel(), anatomy.ravel())[0, 1] < -0.9
        # model-free: after the display convention, air in the top corners is darker than
        # the mediastinum/spine in the central column
        corners = np.concatenate([shown[:5, :5].ravel(), shown[:5, -5:].ravel()])
        assert corners.mean() + 500 < shown[SIZE // 4: 3 * SIZE // 4, SIZE // 2 - 2: SIZE // 2 + 2].mean()
    assert seen == {"MONOCHROME1", "MONOCHROME2"}
    assert len(uids) == len(list((out / "xray").glob("*.dcm")))


def test_raster_files_open_in_expected_modes(corpus):
    out, _ = corpus
    modes = {"fundus": ("PNG", "RGB"), "dermoscopy": ("JPEG", "RGB"), "ultrasound": ("PNG", "L"),
             "endoscopy": ("JPEG", "RGB"), "histology": ("PNG", "RGB")}
    for fam, (fmt, mode) in modes.items():
        for path in (out / fam).glob(f"{fam}_*"):
            with Image.open(path) as im:
                assert (im.format, im.mode, im.size) == (fmt, mode, (SIZE, SIZE)), path
                assert np.asarray(im).std() > 5


# ----------------------------------------------------------------------------- anatomy
@pytest.mark.parametrize("family", FAMILIES)
def test_images_vary_and_have_structure(family):
    fn = FAMILY_GENERATORS[family]
    imgs = [fn(sample_rng(0, family, i), 96).astype(np.float64) for i in range(4)]
    for img in imgs:
        assert img.shape[:2] == (96, 96) and np.isfinite(img).all() and img.std() > 5
        # structure, not white noise: neighbouring pixels are strongly correlated
        assert np.corrcoef(img[:, 1:].ravel(), img[:, :-1].ravel())[0, 1] > 0.5
    assert not np.array_equal(imgs[0], imgs[1])
    assert np.array_equal(fn(sample_rng(0, family, 0), 96), fn(sample_rng(0, family, 0), 96))


def test_ct_bone_brighter_than_soft_tissue_brighter_than_lung():
    n_thorax = 0
    for s in SEEDS:
        img, m, _ = _masks(FAMILY_GENERATORS["ct"], s)
        bone, soft = img[m["bone"]].mean(), np.median(img[m["soft"]])
        assert bone > 300 and -20 < soft < 100 and img[:3, :3].mean() < -900
        if m.get("lung", np.zeros(1, bool)).sum() > 30:
            n_thorax += 1
            assert bone > soft > img[m["lung"]].mean() + 500
            assert img[m["lung"]].mean() < -600
    assert n_thorax >= 2


def test_volumes_change_smoothly_along_z():
    for fam, fn in VOLUME_GENERATORS.items():
        vol = fn(sample_rng(5, fam, 0), 64, 8).astype(np.float64)
        other = fn(sample_rng(5, fam, 1), 64, 8).astype(np.float64)
        near = [np.corrcoef(vol[..., k].ravel(), vol[..., k + 1].ravel())[0, 1] for k in range(7)]
        far = np.corrcoef(vol[..., 3].ravel(), other[..., 3].ravel())[0, 1]
        assert min(near) > 0.8 and min(near) > far, (fam, near, far)
        assert not np.array_equal(vol[..., 0], vol[..., 7])


def test_mr_brain_and_rician_background():
    for s in SEEDS:
        img, m, soft = _masks(FAMILY_GENERATORS["mr"], s)
        brain = m["gm"] | m["wm"]
        bg = np.zeros_like(brain)
        bg[:4, :], bg[-4:, :] = True, True
        bg &= sum(soft.values()) < 1e-3  # outside the head, soft edges included
        assert img[brain].mean() > 4 * img[bg].mean()
        assert abs(img[m["wm"]].mean() - img[m["gm"]].mean()) > 0.05 * img[brain].mean()
        # pure-noise background of a magnitude image is Rayleigh: positive, std/mean ~ 0.52
        ratio = img[bg].std() / img[bg].mean()
        assert 0.4 < ratio < 0.65, ratio


def test_xray_lungs_darker_than_mediastinum():
    for s in SEEDS:
        img, m, _ = _masks(FAMILY_GENERATORS["xray"], s)
        assert img.dtype == np.uint16 and img.max() <= 4095
        central = m["mediastinum"] | m["heart"]
        assert img[m["lung"]].mean() + 200 < img[central].mean()
        assert img[m["lung"]].mean() < img[m["body"]].mean()


def test_fundus_vessels_and_fov():
    for s in SEEDS:
        img, m, _ = _masks(FAMILY_GENERATORS["fundus"], s)
        green = img[..., 1].astype(float)
        inside = m["fov"] & ~m["vessels"] & ~m["disc"]
        assert m["vessels"].sum() > 150
        assert green[m["vessels"]].mean() + 8 < green[inside].mean()
        assert img[~m["fov"]].mean() < 10 < img[inside].mean()
        assert green[m["disc"]].mean() > green[inside].mean() + 30


def test_dermoscopy_lesion_darker_than_skin():
    for s in SEEDS:
        img, m, _ = _masks(FAMILY_GENERATORS["dermoscopy"], s)
        lum = img.astype(float).mean(axis=2)
        lesion = m["lesion"] & ~m.get("hair", np.zeros_like(m["lesion"]))
        skin = ~m["lesion"] & ~m.get("hair", np.zeros_like(m["lesion"]))
        skin[:, :10] = skin[:, -10:] = False  # away from the dermatoscope ring
        skin[:10, :] = skin[-10:, :] = False
        assert lesion.sum() > 50 and lum[lesion].mean() + 25 < lum[skin].mean()


def test_ultrasound_speckle_is_rayleigh_and_lesions_hypoechoic():
    ratios, lesion_contrast = [], []
    for s in SEEDS:
        img, m, soft = _masks(FAMILY_GENERATORS["ultrasound"], s)
        img, echo, fan = img.astype(float), soft["echo"], soft["fan"]
        assert np.median(img[fan < 0.01]) == 0  # black outside the field (depth ticks aside)
        win = 12
        ew = sliding_window_view(echo, (win, win))[::6, ::6]
        iw = sliding_window_view(img, (win, win))[::6, ::6]
        fw = sliding_window_view(fan, (win, win))[::6, ::6]
        for a in range(ew.shape[0]):
            for b in range(ew.shape[1]):
                e = ew[a, b]
                if fw[a, b].min() > 0.99 and 20 < e.mean() and e.max() < 110 and e.std() < 0.05 * e.mean():
                    ratios.append(iw[a, b].std() / iw[a, b].mean())
        if m["lesion"].sum() > 30:
            ring = (sliding_window_view(np.pad(m["lesion"], 5), (11, 11)).max(axis=(2, 3))
                    & ~m["lesion"] & (fan > 0.99))
            lesion_contrast.append(img[m["lesion"]].mean() < img[ring].mean())
    assert len(ratios) > 50
    assert abs(np.median(ratios) - RAYLEIGH_CV) < 0.06, np.median(ratios)
    assert len(lesion_contrast) >= 4 and np.mean(lesion_contrast) >= 0.75


def test_endoscopy_mucosa_polyps_and_highlights():
    n_polyps = 0
    for s in SEEDS:
        img, m, _ = _masks(FAMILY_GENERATORS["endoscopy"], s)
        rgb = img.astype(float)
        assert rgb[..., 0].mean() > rgb[..., 2].mean() + 15  # pink/orange, not grey
        assert (rgb.min(axis=2) > 200).sum() >= 1  # specular highlights
        n_polyps += m.get("polyp", np.zeros(1, bool)).sum() > 20
    assert 3 <= n_polyps < len(SEEDS)


def test_histology_nuclei_dark_and_lumens_bright():
    for s in SEEDS:
        img, m, _ = _masks(FAMILY_GENERATORS["histology"], s)
        rgb = img.astype(float)
        lum = rgb.mean(axis=2)
        stroma = ~m["nuclei"] & ~m.get("lumen", np.zeros_like(m["nuclei"]))
        assert m["nuclei"].sum() > 30
        assert lum[m["nuclei"]].mean() + 20 < lum[stroma].mean()
        # hematoxylin is blue-purple: blue exceeds red more in nuclei than in eosin stroma
        assert (rgb[..., 2] - rgb[..., 0])[m["nuclei"]].mean() > (rgb[..., 2] - rgb[..., 0])[stroma].mean()
        if m.get("lumen") is not None and m["lumen"].sum() > 20:
            assert lum[m["lumen"]].mean() > lum[stroma].mean()
