"""Published splits (`bench data prepare --split-file`) and the leakage guard (`--exclude-from`),
shared by the adapters that support them (issue 18; docs/datasets.md, "Published splits").

Split files are LVM-Med's `files_split/` formats, read from the user's own checkout:
- `Kvasir.json`, `BUID.json`: one JSON object with lists `train`, `valid`, `test` of image file names
  (`cju5wphwwlu3m0987hh3ltg88.jpg`, `benign (298).png`) and `train_labels`, `valid_labels`,
  `test_labels` naming LVM-Med's merged masks, pairwise with the images (checked; the masks used are
  the release's own).
- `fgadr_pkl_file.pkl`: a pickled dict {"train", "val", "test"} of (image path, grade) pairs. It is
  read by an unpickler that admits no class or function at all (only the plain containers, numbers
  and strings pickle encodes without a class reference), so no pickled code can run; a pickle that
  needs one is refused with a one-line recipe to convert it to JSON (the same structure, which is
  also accepted).
Members are matched to the download by file name (path folders dropped), else by stem, ignoring case.
A member missing from the download is an error naming it; a downloaded image the file does not list
is left out (counted and recorded). The file's name, format and sha256 go into dataset.json's split
record (`split.source`), so a prepared folder says which published split it reproduces.

Exclusion lists are LVM-Med's `lvm-med-training-data/*/file_list.txt`: one image id or path per line
(`Brats18_CBICA_ANZ_1`, `00003e63-....jpg`, `OPC-00543/.../1-009.dcm`), matched by file stem ignoring
case. A listed image drawn into the test split is moved to train; with a published split file a listed
test image is refused instead (a published split is never silently changed).
"""
from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import sha256_bytes, write_json_atomic

SHOWN = 5  # names quoted in an error or a record, then a count
JSON_KEYS = ("train", "valid", "test")
PICKLE_SUFFIXES = (".pkl", ".pickle")
_COMPOUND = (".nii.gz",)
CONVERT_HINT = ("convert it once to JSON in a Python you trust: python -c \"import json,pickle,sys; "
                "d=pickle.load(open(sys.argv[1],'rb')); json.dump({k: [list(x) if isinstance(x, tuple) "
                "else x for x in v] for k, v in d.items()}, open(sys.argv[1]+'.json','w'))\" FILE, "
                "then pass FILE.json")


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def basename(entry: str) -> str:
    """The file name of a member written as a name or a (POSIX or Windows) path."""
    return PurePosixPath(str(entry).strip().replace("\\", "/")).name


def stem_of(entry: str) -> str:
    """The case-folded stem of a name or path: folders and one image suffix dropped (.nii.gz whole)."""
    name = basename(entry).lower()
    for suffix in _COMPOUND:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    match = re.fullmatch(r"(.+)\.[a-z][a-z0-9]{1,4}", name)
    return match.group(1) if match else name


# ----------------------------------------------------------------------------- published splits
@dataclass
class PublishedSplit:
    """A split file's membership: {"train"|"val"|"test": [member names as written]}."""
    path: Path
    format: str
    sha256: str
    members: dict[str, list[str]]
    grades: dict[str, int] = field(default_factory=dict)  # FGADR: basename -> grade in the file
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"file": self.path.name, "format": self.format, "sha256": self.sha256,
                "members": {k: len(v) for k, v in self.members.items()}}


def _read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UserError("split file does not exist" if not path.exists() else "split file is not a file", path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"split file unreadable ({type(exc).__name__})", path) from None


def read_lvmmed_json(path: Path) -> PublishedSplit:
    """LVM-Med's Kvasir.json / BUID.json: lists `train`/`valid`/`test` of image names, each with its
    `<split>_labels` list (LVM-Med's merged masks) pairwise. Every problem names the file."""
    path = Path(path)
    raw = _read_bytes(path)
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"split file is not JSON ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("train", "test")):
        raise UserError("not an LVM-Med split file: expected a JSON object with lists 'train', 'valid', "
                        "'test' (and '<split>_labels') as files_split/Kvasir.json or BUID.json", path)
    members = {}
    for key, split in zip(JSON_KEYS, ("train", "val", "test")):
        names = data.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise UserError(f"'{key}' must be a list of file names", path)
        labels = data.get(f"{key}_labels")
        if labels is not None:
            if not isinstance(labels, list) or len(labels) != len(names):
                raise UserError(f"'{key}_labels' must list one mask per image of '{key}' "
                                f"({len(names)}), got {len(labels) if isinstance(labels, list) else labels!r}", path)
            odd = [f"{n} -> {m}" for n, m in zip(names, labels)
                   if not isinstance(m, str) or not (stem_of(m) == stem_of(n) or stem_of(m).startswith(stem_of(n) + "_mask"))]
            if odd:
                raise UserError(f"'{key}_labels' does not pair each image with its mask: {_few(odd)}", path)
        members[split] = list(names)
    return _checked(PublishedSplit(path, "lvm-med json", sha256_bytes(raw), members))


class _NoClassUnpickler(pickle.Unpickler):
    """Admits no global at all: only the opcodes for plain containers, numbers and strings work."""

    def find_class(self, module, name):
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        raise _Refused("a persistent id")


class _Refused(Exception):
    pass


def load_plain_pickle(path: Path, raw: bytes | None = None):
    """The object in a pickle made only of plain containers, numbers and strings; anything that
    would import or call (a class, a function, a reduce) is refused before it runs (one line)."""
    raw = _read_bytes(path) if raw is None else raw
    try:
        return _NoClassUnpickler(io.BytesIO(raw)).load()
    except _Refused as ref:
        raise UserError(f"split pickle refers to {ref} and bench does not run pickled code; "
                        + CONVERT_HINT, path) from None
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is a user error
        raise UserError(f"split file is not a readable pickle ({type(exc).__name__}: {exc}); "
                        + CONVERT_HINT, path) from None


def read_lvmmed_fgadr(path: Path) -> PublishedSplit:
    """LVM-Med's fgadr_pkl_file.pkl (or the same structure as JSON): {"train", "val", "test"}, each
    a list of (image path, grade). Its `val` is its `test` in the release (noted, not used)."""
    path = Path(path)
    raw = _read_bytes(path)
    if path.suffix.lower() in PICKLE_SUFFIXES or raw[:1] == b"\x80":
        data, fmt = load_plain_pickle(path, raw), "lvm-med pickle"
    else:
        try:
            data, fmt = json.loads(raw.decode("utf-8-sig")), "lvm-med json (converted pickle)"
        except (UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"split file is neither a pickle nor JSON ({type(exc).__name__})", path) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), (list, tuple)) for k in ("train", "test")):
        raise UserError("not an LVM-Med FGADR split: expected a dict with lists 'train', 'val', 'test' "
                        "of (image path, grade) pairs, as files_split/fgadr_pkl_file.pkl", path)
    members, grades = {}, {}
    for key, split in (("train", "train"), ("val", "val"), ("test", "test")):
        names = []
        for entry in data.get(key, []) or []:
            if isinstance(entry, str):
                name, grade = entry, None
            elif (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                  and isinstance(entry[1], int) and not isinstance(entry[1], bool)):
                name, grade = entry
            else:
                raise UserError(f"'{key}' entry {entry!r} is not an (image path, grade) pair", path)
            names.append(name)
            if grade is not None and split != "val":
                grades[basename(name).lower()] = int(grade)
        members[split] = names
    return _checked(PublishedSplit(path, fmt, sha256_bytes(raw), members, grades))


def _checked(split: PublishedSplit) -> PublishedSplit:
    """Duplicates refused; a `val` list equal to `test` (FGADR's) or empty is dropped and noted."""
    for part, names in split.members.items():
        seen: set[str] = set()
        dup = []
        for n in names:
            key = basename(n).lower()
            (dup.append(n) if key in seen else seen.add(key))
        if dup:
            raise UserError(f"'{part}' lists {_few(dup)} twice", split.path)
    keys = {p: {basename(n).lower() for n in v} for p, v in split.members.items()}
    if keys.get("val") and keys["val"] == keys["test"]:
        split.notes.append("the file's val list equals its test list: not used; val is carved from train "
                           "(as LVM-Med's training script does, valid_rate 0.2)")
        split.members["val"] = []
        keys["val"] = set()
    elif not keys.get("val"):
        split.members["val"] = []
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        both = sorted(keys[a] & keys.get(b, set()))
        if both:
            raise UserError(f"{len(both)} member(s) are in both '{a}' and '{b}': {_few(both)}", split.path)
    return split


def read_split_file(path: Path, dataset: str) -> PublishedSplit:
    """The published split for `dataset`, in its LVM-Med format."""
    if dataset == "fgadr":
        return read_lvmmed_fgadr(path)
    return read_lvmmed_json(path)


def assign_published(split: PublishedSplit, names: Sequence[str]) -> tuple[list[str | None], dict]:
    """The split of each downloaded image (`names`: its file name, in item order), None for an image
    the file does not list (left out), and the record for dataset.json. A member with no image in the
    download is an error naming it (a few, then a count)."""
    by_name: dict[str, int] = {}
    by_stem: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_name.setdefault(basename(name).lower(), i)
        by_stem.setdefault(stem_of(name), []).append(i)
    out: list[str | None] = [None] * len(names)
    missing = []
    for part in ("train", "val", "test"):
        for member in split.members.get(part, []):
            i = by_name.get(basename(member).lower())
            if i is None and len(candidates := by_stem.get(stem_of(member), [])) == 1:
                i = candidates[0]
            if i is None:
                missing.append(member)
            else:
                out[i] = part
    if missing:
        raise UserError(f"{len(missing)} image(s) of the split file are not in the download: "
                        f"{_few([basename(m) for m in missing])}", split.path)
    left_out = [basename(n) for n, s in zip(names, out) if s is None]
    record = {**split.record(), "left_out": len(left_out), "left_out_examples": left_out[:SHOWN],
              "notes": list(split.notes)}
    return out, record


# ----------------------------------------------------------------------------- exclusion lists
def read_exclude_lists(paths: Sequence[Path]) -> tuple[set[str], list[dict]]:
    """The case-folded stems listed in LVM-Med-style file_list.txt files (one id or path a line;
    blank lines and '#' comments skipped), and a record per file (name, sha256, ids)."""
    stems: set[str] = set()
    records = []
    for path in paths:
        raw = _read_bytes(Path(path))
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise UserError("exclusion list is not UTF-8 text (expected one image id or path a line)", path) from None
        listed = {stem_of(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}
        listed.discard("")
        stems |= listed
        records.append({"file": Path(path).name, "sha256": sha256_bytes(raw), "ids": len(listed)})
    return stems, records


def exclude_from_test(names: Sequence[str], splits: list, options, *, published: bool = False) -> dict | None:
    """Apply `options.exclude_from` to `splits` (one per image, in place): a listed test image is
    moved to train; with a published split file it is refused instead. Returns the record for
    dataset.json (None when no list was given)."""
    if not options.exclude_from:
        return None
    listed, files = read_exclude_lists(options.exclude_from)
    hits = [i for i, n in enumerate(names) if stem_of(n) in listed]
    in_test = [i for i in hits if splits[i] == "test"]
    if in_test and published:
        raise UserError(f"{len(in_test)} image(s) of the published split's test set are on an exclusion "
                        f"list: {_few([basename(names[i]) for i in in_test])}; a published split is not "
                        "changed: drop --exclude-from to reproduce it, or --split-file to draw a clean split",
                        options.exclude_from[0])
    for i in in_test:
        splits[i] = "train"
    return {"lists": files, "listed_in_download": len(hits),
            "by_split": {s: sum(1 for i in hits if splits[i] == s) for s in ("train", "val", "test")},
            "in_test": len(in_test), "moved_to_train": len(in_test),
            "moved_examples": [basename(names[i]) for i in in_test[:SHOWN]], "rule": "listed test images move to train"}


def record_split(folder: Path, **fields) -> Path:
    """Merge `fields` (those not None) into dataset.json's `split` record of a prepared folder."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if fields:
        meta_path = Path(folder) / "dataset.json"
        meta = json.loads(meta_path.read_text())
        meta["split"].update(fields)
        write_json_atomic(meta_path, meta)
    return Path(folder)


def published_or_seeded(names: Sequence[str], options, dataset: str, seeded, seeded_method: str
                        ) -> tuple[list, str, dict]:
    """The split of each image in `names`: the published split file's (`--split-file`; None for an image
    it does not list) or `seeded()`'s, then `--exclude-from` applied. Returns (splits, the method text,
    the fields for dataset.json's split record)."""
    fields: dict = {}
    if options.split_file is not None:
        split_file = read_split_file(options.split_file, dataset)
        labels, fields["source"] = assign_published(split_file, names)
        method = (f"published split file {split_file.path.name} (LVM-Med files_split format), "
                  "membership reproduced exactly")
    else:
        labels, method = [str(s) for s in seeded()], seeded_method
    fields["exclude_from"] = exclude_from_test(names, labels, options, published=options.split_file is not None)
    return labels, method, fields
