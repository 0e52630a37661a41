"""`bench corpus build | show | synth`: index unlabeled images into a pretraining corpus.

harness.corpus (numpy, PIL, pydicom, nibabel) is imported inside the commands: `bench --help` and
the other commands do not pay for it.
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medssl_bench.harness.app.cli.common import ProgressBar, console, workspace_option
from medssl_bench.harness.suffixes import SUPPORTED_SUFFIXES
from medssl_bench.harness.workspace import Workspace

corpus_app = typer.Typer(
    short_help="Build and inspect pretraining corpora: manifests of unlabeled medical images.",
    help="Build and inspect pretraining corpora: manifests of unlabeled medical images. "
    f"A corpus indexes 2D images ({', '.join(SUPPORTED_SUFFIXES)}), every frame of a DICOM "
    "file and every axial slice of a NIfTI volume, drops exact duplicates by pixel hash and gets "
    "an id (a hash of its content). Pass that id to `bench pretrain --corpus ID`; every run "
    "records it, so results say exactly which images they were trained on.",
    no_args_is_help=True,
)

MAX_UNREADABLE_SHOWN = 50


@corpus_app.command(
    "build",
    short_help="Index every image under --root folders into a corpus and print its id.",
    help="Index every image under the --root folders into a corpus and print its id. "
    "Reads PNG, JPEG, TIFF (16-bit is windowed), BMP, GIF, DICOM (.dcm, or any file with the "
    "DICM preamble; a multi-frame file gives one image per frame) and NIfTI (.nii/.nii.gz; one "
    "image per axial slice, a 4D volume contributes its first volume). Identical pixels are kept "
    "once, however they are encoded. A file that fails to decode is listed with the reason and "
    "the build goes on; DICOM objects that are not images (SEG, RTSTRUCT, SR, PDF...) are left out "
    "and counted. The manifest goes to WORKSPACE/corpora/ID/manifest.jsonl; pass the id to "
    "`bench pretrain --corpus ID`. Rebuilding the same images gives the same id, wherever the "
    "folder lives.",
)
def build(
    roots: list[Path] = typer.Option(
        ..., "--root", metavar="DIR", help="Folder of images; repeat for several. Each first-level sub-folder "
        "is one dataset (files directly in the root form a dataset named after the root). An "
        'optional dataset.json there, {"modality": "ct", "synthetic": false}, labels it.'),
    workspace: Path = workspace_option(),
) -> None:
    corpus = _build_with_progress(roots, Workspace.resolve(workspace))
    info = corpus.info
    _print_datasets(info)
    _print_unreadable(info)
    _print_non_image(info)
    console.print(
        f"corpus [bold green]{corpus.id}[/]: {info['n_images']} images, "
        f"{info['n_duplicates']} duplicates dropped, {len(info['unreadable'])} unreadable, "
        f"{info['ignored']} other files ignored", highlight=False, soft_wrap=True)
    console.print(f"manifest: {corpus.manifest_path}", highlight=False, soft_wrap=True)
    console.print(f"next: bench pretrain --method simclr --corpus {corpus.id}", highlight=False)


@corpus_app.command(
    "show",
    short_help="List the corpora in the workspace, or show one.",
    help="Without ID, list the corpora in the workspace (id, images, datasets, synthetic, "
    "created). With ID, show that corpus: images per dataset and modality, duplicates dropped, "
    "unreadable files with their reasons and the roots it was built from.",
)
def show(
    corpus_id: str = typer.Argument(
        None, help="Corpus id (or a unique prefix), a manifest.jsonl or a corpus folder. "
        "Without it, list every corpus in the workspace."),
    workspace: Path = workspace_option(),
) -> None:
    from medssl_bench.harness.corpus import list_corpora, resolve_corpus

    ws = Workspace.resolve(workspace)
    if corpus_id is None:
        _print_corpus_list(list_corpora(ws), ws)
        return
    corpus = resolve_corpus(corpus_id, ws, check_files=False)
    info = corpus.info
    console.print(f"corpus [bold]{corpus.id}[/]  created {info.get('created', '?')}  "
                  f"synthetic: {info.get('synthetic')}", highlight=False)
    for root in info.get("roots", []):
        console.print(f"  root: {root}", highlight=False, soft_wrap=True)
    _print_datasets(info)
    _print_unreadable(info)
    _print_non_image(info)
    modalities = ", ".join(f"{name} {count}" for name, count in info.get("modalities", {}).items())
    console.print(f"{info.get('n_images', len(corpus.entries))} images ({modalities}); "
                  f"manifest: {corpus.manifest_path}", highlight=False, soft_wrap=True)
    _print_packs(corpus.dir)


def _print_packs(corpus_dir: Path) -> None:
    """One line per packed copy (`bench corpus pack`): max side, encoding, shards, size, or unfinished."""
    import json

    for info_path in sorted(corpus_dir.glob("packed-*/pack.json")):
        pack = json.loads(info_path.read_text())
        state = _pack_size(pack) if pack.get("complete") else "unfinished: run `bench corpus pack` again to complete it"
        console.print(f"packed, max side {pack['max_side']}, {pack['encoding']}: {state}; {info_path.parent}",
                      highlight=False, soft_wrap=True)


def _pack_size(pack: dict) -> str:
    return f"{pack['n_images']} images in {pack['n_shards']} shard(s), {pack['bytes'] / 2**20:.1f} MiB"


@corpus_app.command(
    "pack",
    short_help="Decode a corpus once into shards for fast random reads in training.",
    help="Decode every image of a corpus once (DICOM LUTs, NIfTI slices windowed per volume, "
    "frames), shrink it to --max-side (area interpolation, aspect kept; smaller images are stored as "
    "decoded) and write the pixels (--encoding) into WebDataset tar shards of --shard-images images, "
    "beside the manifest in WORKSPACE/corpora/ID/packed-MAX_SIDE/. Every core decodes a shard at a "
    "time; a killed pack keeps its whole shards and resumes. `bench pretrain --corpus ID` then reads "
    "the packed copy (the one with the smallest max side at least --image-size) instead of the "
    "source files: a shuffled epoch over CT/MR volumes no longer decodes a volume per slice. The "
    "run records which copy it read. The shards are plain tar: wids reads them by index from this "
    "folder or from its copy on http(s)/s3 storage.",
)
def pack(
    corpus_id: str = typer.Argument(..., help="Corpus id (or a unique prefix), a manifest.jsonl or a corpus folder."),
    max_side: int = typer.Option(512, "--max-side", min=16, help="Longest side of a stored image in pixels; "
                                 "at least the --image-size you will pretrain at (LVM-Med trains at 224)."),
    shard_images: int = typer.Option(1000, "--shard-images", min=1, help="Images per shard (a unit of work "
                                     "and of resume)."),
    encoding: str = typer.Option("raw", "--encoding", help="raw: uint8 .npy samples, decoded in ~0.05 ms (a 256 px "
                                 "slice); png: lossless, ~2.4x smaller on disk, ~0.9 ms to decode. The loader's "
                                 "cores pay the decoding every epoch."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes that decode (0: one per CPU, up to 8)."),
    workspace: Path = workspace_option(),
) -> None:
    from medssl_bench.harness.corpus import resolve_corpus
    from medssl_bench.harness.corpus_pack import pack_corpus
    from medssl_bench.harness.packed_reader import load_packed

    corpus = resolve_corpus(corpus_id, Workspace.resolve(workspace))
    with ProgressBar(console, f"packing {corpus.id}", transient=True) as bar:
        folder = pack_corpus(corpus, max_side=max_side, shard_images=shard_images, encoding=encoding,
                             workers=workers or None, progress=bar)
    info = load_packed(folder)
    console.print(f"packed corpus [bold green]{corpus.id}[/]: {_pack_size(info)}, max side {info['max_side']}, "
                  f"{info['encoding']}", highlight=False)
    console.print(f"shards: {folder}", highlight=False, soft_wrap=True)
    console.print(f"next: bench pretrain --method simclr --corpus {corpus.id} (reads the packed copy)",
                  highlight=False, soft_wrap=True)


@corpus_app.command(
    "synth",
    short_help="Generate a synthetic phantom corpus (for demos and tests without real data).",
    help="Generate a synthetic pretraining corpus of medical-looking phantoms (one sub-folder "
    "per family, e.g. CT, MR, X-ray, ultrasound) for demos and tests where no real data can be "
    "downloaded. The images are marked synthetic, and so is every result computed from them. "
    "Then run `bench corpus build --root OUT` (or pass --build here) and "
    "`bench pretrain --corpus ID`.",
)
def synth(
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Folder to write the phantom images into "
                             "(one sub-folder per family, so each becomes a dataset)."),
    n: int = typer.Option(..., "--n", min=1, help="Number of images to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same images."),
    size: int = typer.Option(96, "--size", min=16, help="Image side in pixels."),
    build_now: bool = typer.Option(False, "--build/--no-build",
                                   help="Also build the corpus from OUT and print its id."),
    workspace: Path = workspace_option(),
) -> None:
    from medssl_bench.downstream.phantoms import synthesize_corpus  # heavy; only this command needs it

    with ProgressBar(console, "generating phantoms", transient=True) as bar:
        bar(0, n)
        # synthesize_corpus reports increments: progress(k) after writing k more images.
        summary = synthesize_corpus(out, n, seed, size, progress=lambda step=1: bar.advance(step))
    table = Table(title=f"synthetic corpus (seed {summary.get('seed', seed)})")
    table.add_column("family")
    table.add_column("images", justify="right")
    for family, count in sorted(summary.get("per_family", {}).items()):
        table.add_row(str(family), str(count))
    console.print(table)
    console.print(f"wrote {summary.get('n_images', n)} images to {summary.get('out', out)}",
                  highlight=False, soft_wrap=True)
    if not build_now:
        console.print(f"next: bench corpus build --root {summary.get('out', out)}", highlight=False,
                      soft_wrap=True)
        return
    corpus = _build_with_progress([Path(summary.get("out", out))], Workspace.resolve(workspace))
    _print_datasets(corpus.info)
    console.print(f"corpus [bold green]{corpus.id}[/]; next: bench pretrain --method simclr --corpus {corpus.id}",
                  highlight=False)


def _build_with_progress(roots: list[Path], ws: Workspace):
    from medssl_bench.harness.corpus import build_corpus

    with ProgressBar(console, "decoding images", transient=True) as bar:
        return build_corpus(roots, ws, progress=bar)


def _print_datasets(info: dict) -> None:
    table = Table(title="images per dataset")
    for name, justify in [("dataset", "left"), ("modality", "left"), ("images", "right"),
                          ("slices from volumes", "right"), ("duplicates", "right"),
                          ("synthetic", "left")]:
        table.add_column(name, justify=justify, overflow="fold")
    for name, row in info.get("datasets", {}).items():
        table.add_row(name, row.get("modality", "?"), str(row.get("images", 0)),
                      str(row.get("slices_from_volumes", 0)), str(row.get("duplicates", 0)),
                      str(row.get("synthetic")))
    console.print(table)


def _print_unreadable(info: dict) -> None:
    unreadable = info.get("unreadable", [])
    if not unreadable:
        return
    console.print(f"[yellow]{len(unreadable)} unreadable file(s), left out:[/]")
    for item in unreadable[:MAX_UNREADABLE_SHOWN]:
        console.print(f"  {item['path']}: {item['reason']}", highlight=False, soft_wrap=True,
                      markup=False)
    if len(unreadable) > MAX_UNREADABLE_SHOWN:
        console.print(f"  ... and {len(unreadable) - MAX_UNREADABLE_SHOWN} more "
                      "(all listed in corpus.json)")


def _print_non_image(info: dict) -> None:
    """One line: the DICOM objects that are not images (SEG, SR...), left out undecoded. Older
    corpus.json files have no such field: nothing to say."""
    counts = info.get("non_image") or {}
    if counts:
        kinds = ", ".join(f"{label} {count}" for label, count in counts.items())
        console.print(f"{sum(counts.values())} non-image DICOM object(s) left out ({kinds}); "
                      "listed in corpus.json", highlight=False, soft_wrap=True)


def _print_corpus_list(infos: list[dict], ws: Workspace) -> None:
    if not infos:
        console.print(f"no corpora in {ws.corpora}; build one with "
                      "`bench corpus build --root DIR`", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"corpora in {ws.corpora}")
    for name in ("id", "images", "datasets", "synthetic", "created"):
        table.add_column(name, justify="right" if name == "images" else "left")
    for info in infos:
        table.add_row(info.get("id", "?"), str(info.get("n_images", "?")),
                      ", ".join(info.get("datasets", {})), str(info.get("synthetic")),
                      str(info.get("created", "")))
    console.print(table)
