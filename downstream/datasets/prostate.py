"""Multi-site prostate T2 MRI segmentation (Liu et al., SAML / MS-Net; docs/datasets.md): reader
and synthetic writer.

Layout: six site folders RUNMC, BMC, I2CVB, UCL, BIDMC, HK, each with CaseNN.nii.gz and its label
volume CaseNN_segmentation.nii.gz (some copies spell it _Segmentation: matched case-insensitively;
.nii accepted too). Labels: 0 background, 1 prostate, and 2 in the sites that come from NCI-ISBI
2013 (RUNMC, BMC: 1 central gland, 2 peripheral zone; SAML README) read as prostate (whole gland),
as SAML's own loader (`mask[mask==2]=1`) and FedDG do; the remapped voxels are counted in
dataset.json `zone_label_2_voxels`. Any other code becomes background, counted and warned about
(`unknown_label_codes`), or with `strict` is an error naming the file.
Volumes are read voxel-aligned (canonical_seg.read_nifti), windowed once per volume and written as
one sample per axial slice; case = "<SITE>/<CaseNN>", domain = the site.
Split (LVM-Med, docs/tasks.md): train on BMC, test on held-out BMC cases and on RUNMC,
BIDMC and HK. BMC cases get a seeded 60/20/20 train/val/test split by case (never by slice); every
case of every other site present is test with its site as domain (I2CVB and UCL too, so they can
be scored later). BMC is required; the other sites are optional and the notes say which exist.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import SKIP_DIRS, find_root, natural_key, subfolders
from medssl_bench.downstream.datasets.canonical import SYNTHETIC_MARKER, allocate, is_synthetic, synthetic_output
from medssl_bench.downstream.datasets.canonical_seg import (
    SegItem, UnknownCodes, map_codes, nifti_header, read_nifti, seeded_case_split, volume_to_uint8, write_segmentation_dataset,
)
from medssl_bench.downstream.phantoms.seg_brats import nifti_gz
from medssl_bench.downstream.phantoms.seg_prostate import SITE_STYLES, ZONAL_SITES, prostate_volume
from medssl_bench.harness.errors import UserError

NAME = "prostate"
CLASSES = ["background", "prostate"]
TARGET_CLASSES = [1]
SITES = ("RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK")
TRAIN_SITE = "BMC"
PAPER_TEST_SITES = ("BMC", "RUNMC", "BIDMC", "HK")  # the sites LVM-Med reports (table 4)
LAYOUT = ("<SITE>/CaseNN.nii.gz + <SITE>/CaseNN_segmentation.nii.gz (or _Segmentation) for SITE in "
          "RUNMC, BMC, I2CVB, UCL, BIDMC, HK (BMC required); labels 0 background, 1 prostate "
          f"({', '.join(ZONAL_SITES)}: 1 central gland, 2 peripheral zone)")
DEFAULT_N = 18
CODEBOOK = {0: 0, 1: 1, 2: 1}  # 2: peripheral zone (NCI-ISBI sites) -> whole prostate, as SAML
ZONE_CODE = 2
VAL_FRACTION = TEST_FRACTION = 0.2
BMC_FRACTIONS = (1 - VAL_FRACTION - TEST_FRACTION, VAL_FRACTION, TEST_FRACTION)
_FILE = re.compile(r"^(?P<case>.+?)(?P<seg>_segmentation)?\.nii(?:\.gz)?$", re.IGNORECASE)
_TAG = 0x9057
_SYNTH_SPELLING = {"UCL": "Segmentation", "HK": "Segmentation"}  # the rest "_segmentation"
_SYNTH_WEIGHTS = {"RUNMC": 1.2, "I2CVB": 1.0, "UCL": 1.0, "BIDMC": 1.2, "HK": 1.2}


def _site_dirs(folder: Path) -> dict[str, Path]:
    """{SITE: sub-folder} for the site folders in `folder`, matched ignoring case."""
    return {name.upper(): p for name, p in subfolders(folder).items() if name.upper() in SITES}


def scan_site(folder: Path) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """([(case, image, label)], ignored files) of one site folder; a label without its image, an
    image without its label, or a case with two images or two labels is an error naming a file."""
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    ignored = []
    for p in sorted(folder.iterdir()):
        match = _FILE.match(p.name)
        if not p.is_file() or p.name.startswith(".") or not match:
            if p.is_file() or p.name not in SKIP_DIRS:
                ignored.append(p)
            continue
        table = labels if match.group("seg") else images
        case = match.group("case")
        if case in table:
            raise UserError(f"case {case} has two {'label' if table is labels else 'image'} volumes: "
                            f"{table[case].name} and {p.name}", p)
        table[case] = p
    for case, label in labels.items():
        if case not in images:
            raise UserError(f"label volume without its image (expected {case}.nii.gz beside it)", label)
    cases = []
    for case in sorted(images, key=natural_key):
        if case not in labels:
            raise UserError(f"label volume missing (expected {case}_segmentation.nii.gz beside it)",
                            images[case])
        cases.append((case, images[case], labels[case]))
    return cases, ignored


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a multi-site prostate download and write `out_root/prostate/` (slices, by-case split)."""
    options = supported(options, NAME)
    root = find_root(src, SITES, required=(TRAIN_SITE,), layout=LAYOUT)  # BMC: the site LVM-Med trains on
    found = _site_dirs(root)
    ignored = [p for p in root.iterdir() if p.is_file() and p.name != SYNTHETIC_MARKER]
    others = [p.name for p in root.iterdir() if p.is_dir() and p.name.upper() not in SITES
              and not p.name.startswith(".") and p.name not in SKIP_DIRS]
    plan, notes, warnings, site_info = [], [], [], {}
    for site in SITES:
        if site not in found:
            continue
        cases, skipped = scan_site(found[site])
        ignored += skipped
        if not cases:
            if site == TRAIN_SITE:
                raise UserError("the training site folder holds no CaseNN.nii.gz volumes", found[site])
            warnings.append(f"site folder {found[site].name}/ holds no volumes: left out")
            continue
        split = seeded_case_split([c for c, _, _ in cases], BMC_FRACTIONS, [seed, _TAG]) if site == TRAIN_SITE else {}
        for case, image, label in cases:
            shape, affine = nifti_header(image)
            lshape, laffine = nifti_header(label)
            if shape != lshape:
                raise UserError(f"label volume {label.name} has shape {lshape} but its image {image.name} "
                                f"has {shape} (after reorientation)", label)
            if not np.allclose(affine, laffine, rtol=1e-4, atol=1e-3):
                warnings.append(f"{site}/{image.name} and {label.name} have different affines")
            plan.append((site, case, image, label, split.get(case, "test"), shape[2]))
        site_info[site] = {"cases": len(cases), "splits": sorted(set(split.values()) or {"test"})}
    if len(site_info[TRAIN_SITE]["splits"]) < 3:
        warnings.append(f"{TRAIN_SITE} has only {site_info[TRAIN_SITE]['cases']} case(s): all train, "
                        "no BMC val/test")
    missing = [s for s in SITES if s not in site_info]
    notes.append(f"sites present: {', '.join(site_info)}"
                 + (f"; missing: {', '.join(missing)}" if missing else ""))
    if others:
        notes.append(f"ignored folder(s) that are not sites: {', '.join(sorted(others))}")
    if ignored:
        notes.append(f"ignored {len(ignored)} non-NIfTI file(s), e.g. "
                     + ", ".join(str(p.relative_to(root)) for p in ignored[:3]))
    empty: list[str] = []
    unknown = UnknownCodes()
    zone2 = {"total": 0, "by_site": {}, "by_case": {}}  # voxels of code 2 read as prostate

    def items():
        for site, case, image, label, split, _ in plan:
            volume = read_nifti(image)
            codes = read_nifti(label, label=True)
            if volume.shape != codes.shape:
                raise UserError(f"label volume {label.name} is {codes.shape} but its image {image.name} "
                                f"is {volume.shape}", label)
            if float(volume.max()) == float(volume.min()):
                raise UserError(f"image volume is empty (every voxel is {float(volume.min()):g})", image)
            mask = map_codes(codes, CODEBOOK, label, strict=options.strict, unknown=unknown)
            n2 = int(np.count_nonzero(codes == ZONE_CODE))
            if n2:
                zone2["total"] += n2
                zone2["by_site"][site] = zone2["by_site"].get(site, 0) + n2
                zone2["by_case"][f"{site}/{case}"] = n2
            if not mask.any():
                empty.append(f"{site}/{label.name}")
            pixels = volume_to_uint8(volume)
            for k in range(pixels.shape[2]):
                yield SegItem(f"{site}_{case}_{k:03d}", pixels[:, :, k], mask[:, :, k], split,
                              case=f"{site}/{case}", slice=k, domain=site, source=image)
        if empty:  # the writer builds dataset.json after the stream ends
            warnings.append(f"{len(empty)} label volume(s) hold no prostate voxel, e.g. {empty[0]}")
        warnings.extend(unknown.warnings())
        if zone2["total"]:
            notes.append(f"{zone2['total']} voxel(s) of label 2 (peripheral zone, in "
                         f"{', '.join(sorted(zone2['by_site']))}) read as prostate (whole gland), as SAML")

    marker = is_synthetic(Path(src), root)
    return write_segmentation_dataset(
        out_root, NAME, "3d", CLASSES, items(),
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "synthetic_marker": marker},
        split_method=(f"by case: {TRAIN_SITE} cases seeded {1 - VAL_FRACTION - TEST_FRACTION:.0%}/"
                      f"{VAL_FRACTION:.0%}/{TEST_FRACTION:.0%} train/val/test; every case of the other sites "
                      f"is test with its site as domain (LVM-Med: train {TRAIN_SITE}, test "
                      f"{', '.join(PAPER_TEST_SITES)})"),
        seed=seed, synthetic=marker is not None, label_codes={"background": [0], "prostate": [1, 2]},
        target_classes=TARGET_CLASSES, total=sum(p[5] for p in plan), notes=notes, warnings=warnings,
        extra={"train_site": TRAIN_SITE, "paper_test_sites": list(PAPER_TEST_SITES), "sites": site_info,
               "sites_missing": missing, "ignored_files": len(ignored), "empty_label_volumes": empty,
               "zone_label_2_voxels": zone2, "unknown_label_codes": unknown.record},
        progress=progress)


# ----------------------------------------------------------------------------- synthetic
def plan_sites(n: int, sites=SITES) -> dict[str, int]:
    """Volumes per site: BMC a third (at least 6 when n allows, never under 3), the rest spread
    over the other sites, weighted to the paper's test sites, at least 2 each when n allows."""
    others = [s for s in SITES if s in sites and s != TRAIN_SITE]
    n_bmc = max(min(6, n - 2 * len(others)), int(round(n / 3)), 3)
    counts = allocate(n - n_bmc, [_SYNTH_WEIGHTS[s] for s in others], 2) if others else []
    return {TRAIN_SITE: n_bmc, **dict(zip(others, counts))}


def synthetic_case(seed: int, site: str, index: int, size: int):
    """(image, label, spacing) of synthetic case `index` at `site`, in read_nifti's orientation:
    what prepare should read back from the files synthesize writes."""
    return prostate_volume(np.random.default_rng([int(seed) % 2 ** 63, _TAG, SITES.index(site), index]),
                           size, site)


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 64, sites=SITES) -> Path:
    """Write a synthetic multi-site prostate download under `out` (raw layout): pelvic T2 phantoms
    (downstream.phantoms.seg_prostate) with per-site scanner differences - matrix, field of view,
    slices, contrast, noise, bias field, endorectal coil, orientation (two sites store LPS), data
    type and label spelling (UCL, HK: _Segmentation). `sites` limits which site folders exist."""
    unknown = [s for s in sites if s not in SITES]
    if unknown or TRAIN_SITE not in sites:
        raise UserError(f"sites must be among {', '.join(SITES)} and include {TRAIN_SITE}, got {list(sites)}")
    others = sum(s != TRAIN_SITE for s in set(sites))
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3 + others:
        raise UserError(f"n={n} is too small (minimum {3 + others}: 3 {TRAIN_SITE} volumes "
                        "+ 1 per other site)")
    if int(size) < 32:
        raise UserError(f"size={size} is too small (minimum 32 px)")
    seed = int(seed) % 2 ** 63
    marker = {"generator": "bench.datasets.prostate", "version": 1, "seed": seed, "n": int(n),
              "size": int(size), "sites": [s for s in SITES if s in sites]}
    with synthetic_output(Path(out), marker) as tmp:
        for site, count in plan_sites(int(n), sites).items():
            folder = tmp / site
            folder.mkdir()
            for i in range(count):
                image, label, (sx, sy, sz) = synthetic_case(seed, site, i, int(size))
                # read_nifti returns rot90(canonical data): store the inverse rotation (RAS)
                image, label = np.rot90(image, -1, (0, 1)), np.rot90(label, -1, (0, 1))
                w, h, d = image.shape
                affine = np.diag([sx, sy, sz, 1.0])
                affine[:3, 3] = [-w * sx / 2, -h * sy / 2, -d * sz / 2]
                if SITE_STYLES[site].flip:  # LPS storage: same world positions, axes reversed
                    image, label = image[::-1, ::-1], label[::-1, ::-1]
                    affine = affine @ np.array([[-1, 0, 0, w - 1], [0, -1, 0, h - 1],
                                                [0, 0, 1, 0], [0, 0, 0, 1.0]])
                if SITE_STYLES[site].dtype == "int16":
                    image = np.rint(np.clip(image, 0, 32767)).astype(np.int16)
                image = np.ascontiguousarray(image, dtype=SITE_STYLES[site].dtype)
                spelling = _SYNTH_SPELLING.get(site, "segmentation")
                (folder / f"Case{i:02d}.nii.gz").write_bytes(nifti_gz(image, affine))
                (folder / f"Case{i:02d}_{spelling}.nii.gz").write_bytes(
                    nifti_gz(np.ascontiguousarray(label, dtype=np.uint8), affine))
        (tmp / TRAIN_SITE / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(26))  # macOS stray
    return Path(out)
