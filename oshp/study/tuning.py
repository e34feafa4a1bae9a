"""Choose a training setting (a learning rate, a loss weight) on a validation split, never on the meta-test.

Each method and way is trained once per candidate value and seed with ``validation_share`` of the meta-train images
held out (:func:`oshp.data.pairs.validation_holdout`, the same images for every run); its log scores those images on
the base classes after every epoch. The value with the best mean validation score after the last epoch wins.
Novel-class labels and meta-test images take no part, so a table built with the chosen values stays one-shot.

A trial is a run folder ``OUT/<method>_<way>way_f<fold>/<param>-<value>/s<seed>``; a finished one is reused, so
an interrupted tuning resumes and a wider grid only trains the new values.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..core.errors import DatasetError
from ..core.io import atomic_write_json
from ..engine.config import TrainConfig, make_config
from ..engine.run import SUMMARY
from ..engine.train import train
from ..models.registry import get_method
from .reproduce import in_worker_processes

CRITERIA = ("val_base_miou", "val_human_miou", "val_mean_base_acc")
"""What a trial is scored by, read from the last epoch of its log: the base classes' mIoU (background included) on
the held-out episodes by default."""


@dataclass(frozen=True)
class Trial:
    """One training run of a tuning: a method and way, the tuned setting's value, a seed."""

    method: str
    way: str
    fold: int
    param: str
    value: Any
    seed: int

    @property
    def group(self) -> str:
        return f"{self.method}_{self.way}way_f{self.fold}"

    def folder(self, out_dir: Path) -> Path:
        return out_dir / self.group / f"{self.param}-{self.value}" / f"s{self.seed}"


def trial_config(trial: Trial, profile: str, data_root: str | Path, *, validation_share: float,
                 val_pairs_per_class: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The trial's TrainConfig: the profile and the method's own settings, ``overrides``, then the tuned value (a
    TrainConfig field such as ``lr``, else a model option such as ``lambda_nca``)."""
    values = dict(overrides or {})
    options = dict(values.pop("model_options", None) or {})
    if trial.param in {f.name for f in dataclasses.fields(TrainConfig)}:
        values[trial.param] = trial.value
    else:
        options[trial.param] = trial.value
    return make_config(profile, data_root=str(data_root), method=trial.method, way=trial.way, fold=trial.fold,
                       seed=trial.seed, validation_share=validation_share, val_pairs_per_class=val_pairs_per_class,
                       validate_every=10**6, model_options=options, **values)  # scored after the last epoch only


def _train_trial(trial: Trial, cfg: TrainConfig, run: Path) -> tuple[str, float]:
    started = time.time()
    if not (run / SUMMARY).is_file():  # an interrupted trial continues from its last epoch
        train(cfg, run, resume=run.is_dir(), progress=False)
    return f"{trial.group} {trial.param}={trial.value} s{trial.seed}", time.time() - started


def trial_scores(run: Path) -> dict[str, float | None]:
    """The validation scores of a finished trial's last epoch."""
    try:
        history = json.loads((run / SUMMARY).read_text())["history"]
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise DatasetError(f"{run / SUMMARY} is missing or not a training summary ({err}); delete {run} and tune "
                           f"again") from err
    last = history[-1] if history else {}
    if last.get("val_split") != "held-out meta-train":
        raise DatasetError(f"{run} was not scored on a validation split (no held-out meta-train scores in its log); "
                           f"delete it and tune again")
    return {c: last.get(c) for c in CRITERIA}


def tune(methods: Sequence[str], ways: Sequence[str], *, param: str, values: Sequence[Any], profile: str = "demo",
         data_root: str | Path = "data/synthetic", fold: int = 1, seeds: Sequence[int] = (0,),
         validation_share: float = 0.1, val_pairs_per_class: int = 10, criterion: str = "val_base_miou",
         overrides: dict[str, Any] | None = None, out_dir: str | Path = "runs/tune", workers: int = 1,
         progress: bool = True) -> dict:
    """Train every (method, way, value, seed) that has not been trained, score each value by ``criterion`` (mean over
    seeds, last epoch) and choose the best per method and way. Returns (and writes OUT/tuning.json) the rows and
    ``chosen``: ``{"<method>/<way>": value}``. Ways a method does not run are skipped."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown tuning criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if not values:
        raise ValueError("give at least one value to try")
    if not validation_share > 0:
        raise ValueError("tuning needs a validation split: a validation share above 0")
    out_dir = Path(out_dir)
    trials: dict[Trial, tuple[TrainConfig, Path]] = {}
    for method in methods:
        method = get_method(method).name
        for way in ways:
            if way not in get_method(method).ways:
                continue
            for value in values:
                for seed in seeds:
                    trial = Trial(method, way, fold, param, value, seed)
                    cfg = trial_config(trial, profile, data_root, validation_share=validation_share,
                                       val_pairs_per_class=val_pairs_per_class, overrides=overrides)
                    trials[trial] = (cfg, trial.folder(out_dir))
    if not trials:
        raise ValueError(f"none of {', '.join(methods)} runs {' or '.join(w + '-way' for w in ways)}")
    todo = [(t, cfg, run) for t, (cfg, run) in trials.items() if not (run / SUMMARY).is_file()]
    if todo and progress:
        print(f"{len(todo)} of {len(trials)} tuning runs to train ({profile} profile, {workers} at a time) in "
              f"{out_dir}", file=sys.stderr, flush=True)
    if workers <= 1 or len(todo) <= 1:
        for trial, cfg, run in todo:
            name, seconds = _train_trial(trial, cfg, run)
            if progress:
                print(f"{name}: {seconds:.0f} s", file=sys.stderr, flush=True)
    elif todo:
        in_worker_processes(_train_trial, todo, min(workers, len(todo)), progress=progress)
    rows, chosen = [], {}
    scores_by_value: dict[tuple[str, str, Any], list[dict]] = {}
    for t, (_, run) in trials.items():  # trials are in (method, way, value, seed) order
        scores_by_value.setdefault((t.method, t.way, t.value), []).append(trial_scores(run))
    groups: dict[tuple[str, str], list[dict]] = {}
    for (method, way, value), scores in scores_by_value.items():
        row = {"method": method, "way": way, "param": param, "value": value, "seeds": list(seeds)}
        for c in CRITERIA:
            found = [s[c] for s in scores if s[c] is not None]
            row[c] = statistics.fmean(found) if found else None
            row[f"{c}_values"] = [s[c] for s in scores]
        rows.append(row)
        groups.setdefault((method, way), []).append(row)
    for (method, way), group in groups.items():
        scored = [r for r in group if r[criterion] is not None]
        best = max(scored, key=lambda r: r[criterion]) if scored else None
        for r in group:
            r["chosen"] = r is best
        if best is not None:
            chosen[f"{method}/{way}"] = best["value"]
    result = {"param": param, "values": list(values), "profile": profile, "fold": fold, "seeds": list(seeds),
              "validation_share": validation_share, "val_pairs_per_class": val_pairs_per_class,
              "criterion": criterion, "overrides": overrides or {}, "data_root": str(data_root),
              "rows": rows, "chosen": chosen}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result, out_dir / "tuning.json")
    return result
