"""Build the release layout (see :mod:`oshp.data.layout`) from an original ATR, LIP or CIHP download.

The authors' release expects a folder that nobody can download: images and label maps under new
names, plus ``Category_rev_ids`` (mirrored label maps) that had to be fetched separately. This module
builds it from the archives users actually have:

* images and label maps are **symbolic links** (absolute targets) into the extracted download, so
  preparing the 40k-image LIP costs no disk space;
* ``Category_rev_ids/<id>.png`` is **generated** with :func:`oshp.data.vocab.flip_labels`, validating
  every label map against the dataset's vocabulary on the way;
* the split lists are the **released** lists (:func:`oshp.data.official.official_ids`), written
  unchanged, so results are comparable with the paper. ``ids=`` takes custom splits.

Nothing is dropped silently: ids whose files are missing stop the run unless ``allow_missing`` is set,
and then the count is returned and printed.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .parallel import parallel_map
from .layout import (
    FLIPPED_LABEL_DIR,
    IMAGE_DIR,
    LABEL_DIR,
    SPLITS,
    list_file,
    load_label_map,
    save_label_map,
    write_dataset_meta,
    write_id_list,
)
from ..core.errors import DatasetError
from .official import official_ids
from .vocab import DatasetSpec, flip_labels, get_dataset

IMAGE_EXT = ".jpg"
LABEL_EXT = ".png"
GENERATOR = "oshp prepare"
MAX_EXAMPLES = 10
#: With allow_missing: every dropped id, tab-separated "split, id, paths looked at", one per line.
MISSING_FILE = "missing_ids.txt"

# Candidate locations, relative to --source, of each folder an original download provides; the first
# that exists wins. Split "train" -> meta-train ids, "test" -> meta-test ids (the official val split).
_ATR_BASES = ("humanparsing", "", "humanparsing/humanparsing", "ATR/humanparsing")
_LIP_IMAGE_BASES = ("TrainVal_images", "TrainVal_images/TrainVal_images", "", "LIP", "LIP/TrainVal_images")
_LIP_LABEL_BASES = (
    "TrainVal_parsing_annotations",
    "TrainVal_parsing_annotations/TrainVal_parsing_annotations",
    "",
    "LIP",
    "LIP/TrainVal_parsing_annotations",
)
_CIHP_BASES = ("instance-level_human_parsing", "", "instance-level_human_parsing/instance-level_human_parsing", "CIHP")


def _join(bases: tuple[str, ...], sub: str) -> tuple[str, ...]:
    return tuple(f"{b}/{sub}" if b else sub for b in bases)


# dataset -> role -> candidate relative folders; a role is (kind, split) with kind "images" | "labels"
_CANDIDATES: dict[str, dict[tuple[str, str], tuple[str, ...]]] = {
    "atr": {
        ("images", "train"): _join(_ATR_BASES, "JPEGImages"),
        ("labels", "train"): _join(_ATR_BASES, "SegmentationClassAug"),
        ("images", "test"): _join(_ATR_BASES, "JPEGImages"),
        ("labels", "test"): _join(_ATR_BASES, "SegmentationClassAug"),
    },
    "lip": {
        ("images", "train"): _join(_LIP_IMAGE_BASES, "train_images"),
        ("labels", "train"): _join(_LIP_LABEL_BASES, "train_segmentations"),
        ("images", "test"): _join(_LIP_IMAGE_BASES, "val_images"),
        ("labels", "test"): _join(_LIP_LABEL_BASES, "val_segmentations"),
    },
    "cihp": {
        ("images", "train"): _join(_CIHP_BASES, "Training/Images"),
        ("labels", "train"): _join(_CIHP_BASES, "Training/Category_ids"),
        ("images", "test"): _join(_CIHP_BASES, "Validation/Images"),
        ("labels", "test"): _join(_CIHP_BASES, "Validation/Category_ids"),
    },
}

_DOWNLOAD_HINT = {
    "atr": "the ATR 'humanparsing' archive (humanparsing/JPEGImages, humanparsing/SegmentationClassAug)",
    "lip": "the LIP archives TrainVal_images.zip and TrainVal_parsing_annotations.zip",
    "cihp": "the CIHP archive instance-level_human_parsing (Training/, Validation/)",
}


@dataclass(frozen=True)
class SourceLayout:
    """Where one original download keeps each split's images and label maps (absolute folders)."""

    dataset: str
    source: Path
    folders: dict[tuple[str, str], Path]

    def image_dir(self, split: str) -> Path:
        return self.folders[("images", split)]

    def label_dir(self, split: str) -> Path:
        return self.folders[("labels", split)]


def locate_source(dataset: str | DatasetSpec, source: str | Path) -> SourceLayout:
    """Find the image and label folders of an original download inside ``source``.

    Every known layout variant is tried (archive folder inside ``source``, ``source`` being that folder,
    doubly nested extractions, LIP's flattened layout); the error lists every path that was looked for.
    """
    spec = get_dataset(dataset)
    source = Path(source).expanduser().absolute()
    if not source.is_dir():
        raise DatasetError(
            f"source folder {source} does not exist: point --source at the extracted {_DOWNLOAD_HINT[spec.key]}"
        )
    found: dict[tuple[str, str], Path] = {}
    not_found: dict[tuple[str, str], tuple[str, ...]] = {}
    for role, candidates in _CANDIDATES[spec.key].items():
        for rel in candidates:
            folder = source / rel
            if folder.is_dir():
                found[role] = folder
                break
        else:
            not_found[role] = candidates
    if not_found:
        lines = []
        for (kind, split), candidates in not_found.items():
            looked = ", ".join(f"{source}/{rel}" for rel in candidates)
            lines.append(f"  {split} {kind}: looked for {looked}")
        have = ", ".join(sorted(p.name for p in source.iterdir())[:20]) or "nothing"
        raise DatasetError(
            f"{source} does not look like an extracted {spec.display[:-3]} download ({_DOWNLOAD_HINT[spec.key]}); "
            f"these folders were not found:\n" + "\n".join(lines) + f"\n{source} holds: {have}.\n"
            f"Fix: check --source points at the extracted download (the folder that holds the archive's top folder)."
        )
    return SourceLayout(dataset=spec.key, source=source, folders=found)


def _names_in(folder: Path) -> set[str]:
    """File names of a folder, read once (a stat per id is slow on network disks with 40k files)."""
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


def _check_custom_ids(ids: dict[str, list[str]]) -> dict[str, list[str]]:
    if set(ids) != set(SPLITS):
        raise ValueError(f"ids must map both 'train' and 'test' to id lists, got keys {sorted(ids)}")
    out = {}
    for split in SPLITS:
        values = [str(i).strip() for i in ids[split]]
        dupes = sorted(i for i, n in Counter(values).items() if n > 1)
        if dupes:
            raise ValueError(f"ids[{split!r}] lists {dupes[:MAX_EXAMPLES]} more than once; each id must appear once")
        bad = [i for i in values if not i or "/" in i or i.endswith((IMAGE_EXT, LABEL_EXT))]
        if bad:
            raise ValueError(
                f"ids[{split!r}] holds {bad[:MAX_EXAMPLES]}: ids are file names without folder or extension"
            )
        out[split] = sorted(values)  # the release convention: lexicographically sorted lists
    overlap = sorted(set(out["train"]) & set(out["test"]))
    if overlap:
        raise ValueError(f"ids {overlap[:MAX_EXAMPLES]} are in both 'train' and 'test'; the splits must be disjoint")
    return out


def _link(target: Path, link: Path) -> bool:
    """Make ``link`` a symlink to ``target``; True if it had to be (re)made. Never overwrites real files."""
    if link.is_symlink():
        if os.readlink(link) == str(target):
            return False
        link.unlink()
    elif link.exists():
        raise DatasetError(
            f"{link} is a regular file, not a link made by `oshp prepare`; it would be replaced by a link to "
            f"{target}. Fix: choose an empty --out folder, or delete {link.parent} if it holds nothing of yours."
        )
    link.symlink_to(target)
    return True


def _flipped_is_current(src: Path, dst: Path) -> bool:
    """An existing flipped map can be kept if it is newer than its label map and readable at the same size."""
    try:
        if dst.stat().st_mtime < src.stat().st_mtime:
            return False
        with Image.open(src) as label_img:
            size = label_img.size
        with Image.open(dst) as img:
            if img.mode not in ("L", "P") or img.size != size:
                return False
            img.verify()  # reads every chunk and checks CRCs without decoding pixels
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def _flip_one(task: tuple[str, str, str]) -> tuple[str, str]:
    """Worker: (dataset key, label path, flipped path) -> ('written'|'kept'|'error', error message)."""
    key, src, dst = task
    src_path, dst_path = Path(src), Path(dst)
    if dst_path.exists() and _flipped_is_current(src_path, dst_path):
        return "kept", ""
    spec = get_dataset(key)
    try:
        label = load_label_map(src_path, spec)
    except DatasetError as err:
        return "error", str(err)
    tmp = dst_path.with_name(f".{dst_path.stem}.tmp{os.getpid()}.png")
    save_label_map(tmp, flip_labels(label, spec))
    os.replace(tmp, dst_path)  # atomic: an interrupted run never leaves a half-written map behind
    return "written", ""


def _run_flips(tasks: list[tuple[str, str, str]], progress: bool, workers: int | None) -> list[tuple[str, str]]:
    return parallel_map(_flip_one, tasks, workers=workers, progress=progress, desc="flipped labels", unit="map")


def prepare_dataset(
    dataset: str,
    source: str | Path,
    out: str | Path,
    *,
    allow_missing: bool = False,
    progress: bool = True,
    ids: dict[str, list[str]] | None = None,
    workers: int | None = None,
) -> dict:
    """Build the release layout in ``out`` from the original download in ``source``; return a report.

    ``ids`` ("train"/"test" -> ids) replaces the released lists, for custom splits and tests. Ids whose
    image or label map is missing raise :class:`DatasetError` (count, examples, paths looked at) unless
    ``allow_missing``, which writes lists without them and reports how many were dropped. Reruns are
    cheap: links already in place and flipped maps newer than their label map are kept.
    """
    spec = get_dataset(dataset)
    layout = locate_source(spec, source)
    out = Path(out).expanduser().absolute()
    if ids is None:
        wanted = {split: list(official_ids(spec.key, split)) for split in SPLITS}
    else:
        wanted = _check_custom_ids(ids)

    # ---- which ids have both files; label maps present under another extension are an error of their own
    listings: dict[Path, set[str]] = {}

    def names(folder: Path) -> set[str]:
        if folder not in listings:
            listings[folder] = _names_in(folder)
        return listings[folder]

    kept: dict[str, list[str]] = {}
    missing: list[tuple[str, str, list[str]]] = []  # (split, id, paths looked at)
    not_png: list[tuple[str, list[str]]] = []
    for split in SPLITS:
        image_dir, label_dir = layout.image_dir(split), layout.label_dir(split)
        images, labels = names(image_dir), names(label_dir)
        kept[split] = []
        for image_id in wanted[split]:
            looked = []
            if image_id + IMAGE_EXT not in images:
                looked.append(str(image_dir / (image_id + IMAGE_EXT)))
            if image_id + LABEL_EXT not in labels:
                looked.append(str(label_dir / (image_id + LABEL_EXT)))
            if looked:
                missing.append((split, image_id, looked))
            else:
                kept[split].append(image_id)
        if any(m[0] == split for m in missing):
            # Only now pay for a second look: is the label there under another extension (a colour .jpg export)?
            stems: dict[str, list[str]] = {}
            for name in labels:
                stem, dot, _ = name.rpartition(".")
                if dot:
                    stems.setdefault(stem, []).append(name)
            for m_split, image_id, _looked in missing:
                if m_split == split and image_id + LABEL_EXT not in labels and image_id in stems:
                    not_png.append((str(label_dir / (image_id + LABEL_EXT)), sorted(stems[image_id])))
    if not_png:
        examples = "; ".join(f"{path} (found {', '.join(found)})" for path, found in not_png[:MAX_EXAMPLES])
        raise DatasetError(
            f"{len(not_png)} label map(s) are not PNG files named <id>.png, e.g. {examples}. Label maps must be "
            f"lossless single-channel PNGs of class ids (a JPEG changes the ids). Fix: point --source at the "
            f"original {spec.display[:-3]} annotations, not a converted or visualised copy."
        )
    if missing and not allow_missing:
        lines = [f"  {split} {image_id}: {' and '.join(looked)}" for split, image_id, looked in missing[:MAX_EXAMPLES]]
        raise DatasetError(
            f"{len(missing)} of {sum(len(v) for v in wanted.values())} listed ids have no image or label map in "
            f"{layout.source}, e.g. (id: paths looked at)\n" + "\n".join(lines) + "\n"
            f"Fix: check --source points at the extracted download ({_DOWNLOAD_HINT[spec.key]}) and that the "
            f"archives extracted completely, or pass --allow-missing to build reduced lists without these ids."
        )

    # ---- links
    for folder in (IMAGE_DIR, LABEL_DIR, FLIPPED_LABEL_DIR):
        (out / folder).mkdir(parents=True, exist_ok=True)
    linked = 0
    tasks = []
    for split in SPLITS:
        image_dir, label_dir = layout.image_dir(split), layout.label_dir(split)
        for image_id in kept[split]:
            image_name, label_name = image_id + IMAGE_EXT, image_id + LABEL_EXT
            linked += _link(image_dir / image_name, out / IMAGE_DIR / image_name)
            linked += _link(label_dir / label_name, out / LABEL_DIR / label_name)
            tasks.append((spec.key, str(label_dir / label_name), str(out / FLIPPED_LABEL_DIR / label_name)))

    # ---- flipped label maps (validates every label map's values on the way)
    results = _run_flips(tasks, progress, workers)
    errors = [message for status, message in results if status == "error"]
    if errors:
        shown = "\n".join(f"  {message}" for message in errors[:MAX_EXAMPLES])
        raise DatasetError(
            f"{len(errors)} label map(s) in {layout.source} cannot be used as {spec.display[:-3]} labels:\n{shown}\n"
            f"Fix: check --dataset matches the download ({spec.key} was given) and that --source holds the original "
            f"label maps; the split lists were not written."
        )
    written = sum(status == "written" for status, _ in results)

    # ---- lists and metadata last, so a failed run never looks like a finished dataset
    for split in SPLITS:
        write_id_list(list_file(out, split), kept[split])
    write_dataset_meta(
        out, {"dataset": spec.key, "generator": GENERATOR, "source": str(layout.source), "missing": len(missing)}
    )
    missing_file = out / MISSING_FILE
    if missing:
        rows = (f"{split}\t{image_id}\t{' '.join(looked)}\n" for split, image_id, looked in missing)
        missing_file.write_text("".join(rows))
        print(
            f"warning: {len(missing)} listed id(s) had no image or label map in {layout.source} and were left out "
            f"of the lists in {out / 'list'} (--allow-missing); e.g. {', '.join(m[1] for m in missing[:MAX_EXAMPLES])}"
            f"; all of them, with the paths looked at, are in {missing_file}",
            file=sys.stderr,
        )
    elif missing_file.exists():
        missing_file.unlink()  # from an earlier run with --allow-missing; nothing is missing now
    report = {
        "dataset": spec.key,
        "source": str(layout.source),
        "out": str(out),
        "folders": {f"{split} {kind}": str(path) for (kind, split), path in layout.folders.items()},
        "train": len(kept["train"]),
        "test": len(kept["test"]),
        "missing": len(missing),
        "missing_examples": {split: [i for s, i, _ in missing if s == split][:MAX_EXAMPLES] for split in SPLITS},
        "missing_file": str(missing_file) if missing else None,
        "linked": linked,
        "flipped_written": written,
        "flipped_kept": len(results) - written,
    }
    if progress:
        print(
            f"{spec.display}: {report['train']} meta-train / {report['test']} meta-test ids in {out} "
            f"({linked} links made, {written} flipped maps written, {report['flipped_kept']} up to date, "
            f"{len(missing)} missing)",
            file=sys.stderr,
        )
    return report
