"""`oshp check-data`: find every problem of a release-layout dataset before a long run trips over it.

Training reads files lazily, so a missing flipped map or a colour label image otherwise surfaces hours
into a run (the release asserts on it in the loader). :func:`check_dataset` reports all problems at
once, each naming the file and the fix; nothing is skipped silently. Dot-files (``.DS_Store``, the
temporary files of an interrupted ``oshp prepare``) are the only files it ignores.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .parallel import parallel_map
from .layout import (
    FLIPPED_LABEL_DIR,
    IMAGE_DIR,
    LABEL_DIR,
    LIST_DIR,
    META_FILE,
    ReleaseLayoutDataset,
    SPLITS,
    list_file,
    load_label_map,
    read_dataset_meta,
    read_id_list,
)
from ..core.errors import DatasetError
from .vocab import DatasetSpec, flip_labels, get_dataset
from ..core.errors import UnknownClassError
from ..core.labels import IGNORE_INDEX
from .pairs import build_meta_test_pairs

IMAGE_EXT = ".jpg"
LABEL_EXT = ".png"
#: More problems of one kind than this are summarised in one Problem (count and first examples).
SUMMARY_LIMIT = 20
EXAMPLES = 10
_LABEL_MODES = ("L", "P", "I", "I;16")  # what load_label_map accepts
_ID_SUFFIXES = (IMAGE_EXT, LABEL_EXT, ".jpeg")



def _prepare_hint(root: Path, key: str = "D") -> str:
    return (f"rebuild it with `oshp prepare --dataset {key} --source RAW --out {root}` "
            f"(or `oshp synth` for synthetic data)")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file (or folder) concerned, what is wrong, and how to fix it."""

    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} -> fix: {self.fix}"


class _Collector:
    """Problems grouped by kind, so that a kind with thousands of hits reads as one summarised line."""

    def __init__(self) -> None:
        self._kinds: dict[str, list[Problem]] = {}
        self._summary: dict[str, tuple[str, str, str]] = {}

    def add(self, kind: str, path, message: str, fix: str, summary: tuple[str, str, str] | None = None) -> None:
        """``summary`` = (folder, message about N files, fix) used if the kind exceeds SUMMARY_LIMIT."""
        self._kinds.setdefault(kind, []).append(Problem(str(path), message, fix))
        if summary is not None:
            self._summary.setdefault(kind, summary)

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        for kind, problems in self._kinds.items():
            if len(problems) > SUMMARY_LIMIT and kind in self._summary:
                folder, message, fix = self._summary[kind]
                examples = ", ".join(Path(p.path).name for p in problems[:EXAMPLES])
                first = problems[0]
                out.append(
                    Problem(
                        str(folder),
                        f"{len(problems)} {message}, e.g. {examples} (first: {first.message})",
                        fix,
                    )
                )
            else:
                out.extend(problems)
        return out


# ------------------------------------------------------------------------------------------ per-id checks
def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height), mode from the file header, without decoding pixels."""
    with Image.open(path) as img:
        return img.size, img.mode


def _check_one(task: tuple[str, str, str, bool, bool, bool, bool]) -> list[tuple[str, str, str, str]]:
    """Worker: check one listed id's files; returns (kind, path, message, fix) tuples."""
    root_s, key, image_id, has_image, has_label, has_flip, deep = task
    root, spec = Path(root_s), get_dataset(key)
    image_path = root / IMAGE_DIR / f"{image_id}{IMAGE_EXT}"
    label_path = root / LABEL_DIR / f"{image_id}{LABEL_EXT}"
    flip_path = root / FLIPPED_LABEL_DIR / f"{image_id}{LABEL_EXT}"
    found: list[tuple[str, str, str, str]] = []

    image_size = None
    if has_image:
        try:
            with Image.open(image_path) as img:
                image_size = img.size
                if deep:
                    img.load()  # a truncated download only shows when the pixels are decoded
        except (OSError, SyntaxError, ValueError) as err:
            found.append(("bad_image", str(image_path), f"unreadable or corrupt image ({err})",
                          "replace the file with the original from the download (re-extract the archive)"))

    label = None
    if has_label:
        try:
            mode = _header(label_path)[1]
        except (OSError, SyntaxError, ValueError) as err:
            mode = None
            found.append(("bad_label", str(label_path), f"unreadable or corrupt label map ({err})",
                          "replace the file with the original from the download"))
        if mode is not None and mode not in _LABEL_MODES:
            found.append(("colour_label", str(label_path),
                          f"colour ({mode}) label image; label maps must be single-channel PNGs of class ids",
                          "use the dataset's class-id annotations (e.g. LIP *_segmentations, CIHP Category_ids), "
                          "not the coloured visualisations"))
        elif mode is not None:
            try:
                label = load_label_map(label_path)
            except DatasetError as err:
                found.append(("bad_label", str(label_path), f"unreadable or corrupt label map ({_cause(err)})",
                              "replace the file with the original from the download"))
        if label is not None:
            values = np.unique(label)
            bad = [int(v) for v in values if v >= spec.num_raw_classes and v != IGNORE_INDEX]
            if bad:
                found.append(("label_values", str(label_path),
                              f"label values {bad} are outside the {spec.display} vocabulary "
                              f"(0..{spec.num_raw_classes - 1} and 255 = ignore)",
                              f"check this is a label map of {spec.key.upper()} (or pass the right --dataset) and "
                              f"replace it with the original annotation"))
            if image_size is not None and (label.shape[1], label.shape[0]) != image_size:
                found.append(("size", str(label_path),
                              f"label map is {label.shape[1]}x{label.shape[0]} but its image {image_path.name} is "
                              f"{image_size[0]}x{image_size[1]}",
                              "image and label map must have the same size; take both from the same download"))

    if has_flip:
        try:
            flip_size, flip_mode = _header(flip_path)
        except (OSError, SyntaxError, ValueError) as err:
            found.append(("bad_flip", str(flip_path), f"unreadable or corrupt flipped label map ({err})",
                          "delete it and rerun `oshp prepare`, which regenerates missing flipped maps"))
            return found
        if flip_mode not in _LABEL_MODES:
            found.append(("colour_flip", str(flip_path), f"flipped label map is a {flip_mode} (colour) image",
                          "delete it and rerun `oshp prepare`, which regenerates missing flipped maps"))
            return found
        if label is not None and (label.shape[1], label.shape[0]) != flip_size:
            found.append(("flip_size", str(flip_path),
                          f"flipped label map is {flip_size[0]}x{flip_size[1]} but the label map is "
                          f"{label.shape[1]}x{label.shape[0]}",
                          "delete it and rerun `oshp prepare`, which regenerates missing flipped maps"))
        elif deep and label is not None:
            try:
                flipped = load_label_map(flip_path)
            except DatasetError as err:
                found.append(("bad_flip", str(flip_path), f"unreadable or corrupt flipped label map ({_cause(err)})",
                              "delete it and rerun `oshp prepare`, which regenerates missing flipped maps"))
                return found
            expected = flip_labels(label, spec)
            if not np.array_equal(flipped, expected):
                share = float(np.mean(flipped != expected))
                found.append(("flip_content", str(flip_path),
                              f"flipped label map is not the label map mirrored with left/right ids swapped "
                              f"({share:.0%} of pixels differ)",
                              "delete it and rerun `oshp prepare`, which regenerates missing flipped maps"))
    return found


def _cause(err: Exception) -> str:
    text = str(err)
    start, end = text.find("("), text.rfind(")")
    return text[start + 1 : end] if 0 <= start < end else text


def _run(tasks: list, progress: bool) -> list[list[tuple[str, str, str, str]]]:
    return parallel_map(_check_one, tasks, progress=progress, desc="checking", unit="id")


# ------------------------------------------------------------------------------------------ whole dataset
def _resolve_spec(root: Path, dataset: str | None, problems: _Collector) -> DatasetSpec:
    """The vocabulary to check against; without --dataset it must come from oshp_dataset.json."""
    if dataset is None:
        try:
            return ReleaseLayoutDataset.open(root).spec
        except UnknownClassError as err:
            raise DatasetError(f"{root / META_FILE}: {err}; fix the file or pass --dataset atr|lip|cihp") from err
    spec = get_dataset(dataset)
    try:
        meta = read_dataset_meta(root)
    except DatasetError as err:
        problems.add("meta", root / META_FILE, f"not valid JSON ({_cause(err)})",
                     "delete it or rerun `oshp prepare`, which writes it")
        return spec
    if meta.get("dataset") not in (None, spec.key):
        problems.add("meta", root / META_FILE,
                     f"says this is a {str(meta['dataset']).upper()} dataset but --dataset {spec.key} was given",
                     f"pass --dataset {meta['dataset']}, or correct the file if it is wrong")
    return spec


def _scan(folder: Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """{file name: kind} of a folder ('file' or 'broken' for dangling links) and (name, link target) of the broken."""
    names: dict[str, str] = {}
    broken: list[tuple[str, str]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_file():  # follows symlinks
                names[entry.name] = "file"
            elif entry.is_symlink():
                names[entry.name] = "broken"
                broken.append((entry.name, os.readlink(entry.path)))
            else:
                names[entry.name] = "other"
    return names, broken


def check_dataset(
    root: str | Path, dataset: str | None = None, *, progress: bool = False, deep: bool = True, pair_rule: bool = True
) -> list[Problem]:
    """Every problem of the release-layout dataset at ``root`` (empty list = ready to use).

    ``pair_rule``: also check, once the files are sound, that the meta-test pair rule can be met (train, evaluate and
    pairs need it); off only to check the files of a dataset too small to be evaluated.

    ``dataset`` names the vocabulary; without it ``oshp_dataset.json`` must say (else DatasetError asking for
    --dataset). ``deep`` also decodes every image and compares each flipped map with
    ``flip_labels(label)``; without it images and flipped maps are checked from their headers only.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "dataset root is a file, not a folder" if root.exists() else "dataset root does not exist"
        return [Problem(str(root), what, f"check the path, or {_prepare_hint(root)}")]
    if not any(root.iterdir()):
        return [Problem(str(root), "the folder is empty", f"point --data-root at a dataset, or "
                        f"{_prepare_hint(root, dataset or 'atr|lip|cihp')}")]
    problems = _Collector()
    spec = _resolve_spec(root, dataset, problems)

    # ---- folders
    folders = {name: root / name for name in (IMAGE_DIR, LABEL_DIR, FLIPPED_LABEL_DIR, LIST_DIR)}
    listings: dict[str, dict[str, str]] = {}
    for name, folder in folders.items():
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "missing folder"
            fix = _prepare_hint(root, spec.key)
            if name == FLIPPED_LABEL_DIR:
                fix = f"generate the flipped label maps: {fix.removeprefix('rebuild it with ')}"
            problems.add("folder", folder, what, fix)
            continue
        if name == LIST_DIR:
            continue
        listings[name], broken = _scan(folder)
        for file_name, target in broken:
            problems.add(
                f"broken_link:{name}", folder / file_name, f"broken symbolic link to {target}",
                "the download it points into moved or was deleted: rerun `oshp prepare` with the new --source",
                summary=(folder, "broken symbolic links", "rerun `oshp prepare` with the current --source"),
            )
        ext = IMAGE_EXT if name == IMAGE_DIR else LABEL_EXT
        for file_name, kind in sorted(listings[name].items()):
            if kind == "other":
                problems.add(f"not_file:{name}", folder / file_name, "not a file",
                             f"remove it; {name} holds only <id>{ext} files")
            elif kind == "file" and not file_name.endswith(ext):
                problems.add(f"extension:{name}", folder / file_name,
                             f"not a {ext} file; the loader only reads <id>{ext}",
                             f"convert or rename it to <id>{ext}, or remove it",
                             summary=(folder, f"files that are not {ext}", f"keep only <id>{ext} files"))

    def stems(name: str) -> set[str]:
        ext = IMAGE_EXT if name == IMAGE_DIR else LABEL_EXT
        return {n[: -len(ext)] for n, kind in listings.get(name, {}).items() if n.endswith(ext) and kind == "file"}

    images, labels, flips = stems(IMAGE_DIR), stems(LABEL_DIR), stems(FLIPPED_LABEL_DIR)

    # ---- lists
    lists: dict[str, list[str]] = {}
    for split in SPLITS:
        path = list_file(root, split)
        if not path.is_file():
            if folders[LIST_DIR].is_dir():
                problems.add("list", path, "missing list file",
                             "write the split's ids there, one per line without extension "
                             "(`oshp prepare` writes the released lists)")
            continue
        ids = read_id_list(path)
        lists[split] = ids
        if not ids:
            problems.add("list", path, "the list is empty",
                         "write the split's ids, one per line (or rerun `oshp prepare`)")
        for image_id, count in Counter(ids).items():
            if count > 1:
                problems.add("duplicate", path, f"id {image_id} is listed {count} times",
                             "keep one line per id",
                             summary=(path, "ids listed more than once", "keep one line per id"))
        for image_id in (i for i in ids if i.endswith(_ID_SUFFIXES)):
            problems.add("list_ext", path, f"entry {image_id!r} has a file extension",
                         "list ids without extension (2500_1, not 2500_1.jpg)",
                         summary=(path, "entries with a file extension", "list ids without extension"))
    if len(lists) == 2:
        both = sorted(set(lists["train"]) & set(lists["test"]))
        for image_id in both:
            problems.add(
                "overlap", list_file(root, "test"), f"id {image_id} is in both meta_train_id.txt and meta_test_id.txt",
                "remove it from one of the lists: meta-train and meta-test must be disjoint",
                summary=(root / LIST_DIR, "ids in both meta_train_id.txt and meta_test_id.txt",
                         "make meta-train and meta-test disjoint"),
            )

    # ---- listed ids whose files are missing
    # every listed id once; entries with an extension were reported above and are not looked up as files
    wanted = [i for i in dict.fromkeys(lists.get("train", []) + lists.get("test", [])) if not i.endswith(_ID_SUFFIXES)]
    missing_specs = (
        (IMAGE_DIR, images, IMAGE_EXT, "listed id has no image",
         "restore the image (is the source download complete?) or rerun `oshp prepare`"),
        (LABEL_DIR, labels, LABEL_EXT, "listed id has no label map",
         "restore the label map (is the source download complete?) or rerun `oshp prepare`"),
        (FLIPPED_LABEL_DIR, flips, LABEL_EXT, "listed id has no flipped label map",
         "rerun `oshp prepare`, which generates the missing flipped maps"),
    )
    for name, present, ext, message, fix in missing_specs:
        if name not in listings:
            continue  # the missing folder is already reported once
        for image_id in wanted:
            if image_id not in present and listings[name].get(image_id + ext) != "broken":
                problems.add(f"missing:{name}", folders[name] / f"{image_id}{ext}", message, fix,
                             summary=(folders[name], f"listed ids with no file in {name}", fix))

    # ---- files without their partner
    if IMAGE_DIR in listings and LABEL_DIR in listings:
        listed = set(wanted)  # listed ids with a missing file are reported above, once
        for image_id in sorted(images - labels - listed):
            if listings[LABEL_DIR].get(image_id + LABEL_EXT) == "broken":
                continue
            problems.add(
                "orphan_image", folders[IMAGE_DIR] / f"{image_id}{IMAGE_EXT}", "image without a label map",
                f"add {LABEL_DIR}/{image_id}{LABEL_EXT} or remove the image",
                summary=(folders[IMAGE_DIR], "images without a label map", "add the label maps or remove the images"),
            )
        for image_id in sorted(labels - images - listed):
            if listings[IMAGE_DIR].get(image_id + IMAGE_EXT) == "broken":
                continue
            problems.add(
                "orphan_label", folders[LABEL_DIR] / f"{image_id}{LABEL_EXT}", "label map without an image",
                f"add {IMAGE_DIR}/{image_id}{IMAGE_EXT} or remove the label map",
                summary=(folders[LABEL_DIR], "label maps without an image", "add the images or remove the label maps"),
            )

    # ---- contents of every listed id
    tasks = [
        (str(root), spec.key, image_id, image_id in images, image_id in labels, image_id in flips, deep)
        for image_id in wanted
        if image_id in images or image_id in labels or image_id in flips
    ]
    summaries = {
        "bad_image": (folders[IMAGE_DIR], "unreadable or corrupt images", "replace them with the originals"),
        "bad_label": (folders[LABEL_DIR], "unreadable or corrupt label maps", "replace them with the originals"),
        "colour_label": (folders[LABEL_DIR], "colour label images", "use single-channel class-id PNGs"),
        "label_values": (folders[LABEL_DIR], f"label maps with values outside the {spec.display} vocabulary",
                         "check --dataset and replace the label maps with the original annotations"),
        "size": (folders[LABEL_DIR], "label maps whose size differs from their image",
                 "take images and labels from one download"),
        "bad_flip": (folders[FLIPPED_LABEL_DIR], "unreadable flipped label maps",
                     "delete them and rerun `oshp prepare`"),
        "colour_flip": (folders[FLIPPED_LABEL_DIR], "colour flipped label maps",
                        "delete them and rerun `oshp prepare`"),
        "flip_size": (folders[FLIPPED_LABEL_DIR], "flipped label maps whose size differs from the label map",
                      "delete them and rerun `oshp prepare`"),
        "flip_content": (folders[FLIPPED_LABEL_DIR], "flipped label maps that are not flip_labels(label map)",
                         "delete them and rerun `oshp prepare`"),
    }
    for found in _run(tasks, progress):
        for kind, path, message, fix in found:
            problems.add(kind, path, message, fix, summary=summaries[kind])
    if pair_rule and not problems.problems():  # the labels are sound: can train, evaluate and pairs draw the meta-test pairs?
        _check_pair_rule(root, spec, problems, progress)
    return problems.problems()


def _check_pair_rule(root: Path, spec: DatasetSpec, problems: _Collector, progress: bool) -> None:

    try:
        build_meta_test_pairs(spec, root, progress=progress)
    except DatasetError as err:
        problems.add("pair_rule", root / META_FILE, f"the meta-test pairs cannot be drawn: {err}",
                     "add test images, or set a smaller queries_per_class / supports_per_query in this file")


def format_report(problems: list[Problem], root: str | Path) -> str:
    """Human-readable result of :func:`check_dataset`: an OK line with the counts, or every problem and its fix."""
    root = Path(root)
    if not problems:
        counts = []
        for split in SPLITS:
            try:
                counts.append(len(read_id_list(list_file(root, split))))
            except DatasetError:
                counts.append(0)
        return f"OK: {root} is ready to use ({counts[0]} train / {counts[1]} test images checked)"
    lines = [f"{len(problems)} problem(s) in {root}:"]
    for n, problem in enumerate(problems, 1):
        lines.append(f"{n:>4}. {problem.path}: {problem.message}")
        lines.append(f"      fix: {problem.fix}")
    lines.append("Fix these and run `oshp check-data` again.")
    return "\n".join(lines)
