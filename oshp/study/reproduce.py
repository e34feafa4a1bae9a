"""Regenerate every table and figure: the runs each notebook needs, trained once and reused, and the
papermill batch that executes the notebooks.

A reproduction profile is a training budget plus the data it runs on:

- ``smoke``: a tiny synthetic dataset generated into the output folder and the ``smoke`` training profile (seconds
  a run). CI runs the notebooks this way through nbval; the numbers check that nothing breaks and mean nothing.
- ``demo``: the synthetic dataset (``oshp synth``; generated when missing) and the ``quick`` training budget, cut so
  that every run of every notebook (34 runs) fits in about 20 minutes on a 2-core CPU. The single-run ``demo``
  training profile (`oshp train --profile demo`) is longer; ``--train-profile demo`` uses it here (hours).
- ``paper``: the real datasets and the paper's configuration (``paper`` training profile), meant for GPUs.

A run is identified by :class:`RunSpec` (method, way, fold, seed, dataset, variant) and lives in
``OUT/runs/<name>``; a run whose ``metrics.json`` exists is never trained again, so an interrupted reproduction
resumes, and the notebooks share runs (Table 4's full model is Table 1's EOP-Net, Fig. 7's is the same run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..core.errors import DatasetError
from ..models.registry import METHODS, get_method
from ..report.figures import write_results

__all__ = ["PLANS", "NOTEBOOKS", "ReproducePlan", "RunSpec", "VARIANTS", "get_plan", "repo_root", "resolve_paths",
           "prepare_data", "ensure_run", "ensure_runs", "load_result", "notebook_runs", "all_runs", "run_notebooks",
           "reproduce", "notebook", "NotebookContext", "measure_table5", "shown_path", "publish_notebooks"]

NOTEBOOKS: tuple[str, ...] = (
    "00_oshp_data.ipynb", "01_tour.ipynb", "02_train_one_fold.ipynb", "03_tables_1_3.ipynb", "04_table4_ablation.ipynb",
    "05_table5_complexity.ipynb", "06_fig7_dynamic_prototypes.ipynb", "07_figs4_6_parses.ipynb",
)

# what a run variant changes in the training configuration
VARIANTS: dict[str, dict[str, Any]] = {
    "": {},
    "oracle": {"label_novel": True},  # novel classes labelled in meta-training: the testing bias's upper bound
    "scratch": {"backbone_weights": "none"},  # no pretrained backbone
    "no-dp": {"model_options": {"dynamic_prototypes": False}},  # Fig. 7: static prototypes throughout
    # Table 4 rows; the full model (DML + WS + MT + CL) is the plain run
    "agm": {"model_options": {"ablation": "AGM"}},
    "npm": {"model_options": {"ablation": "NPM"}},
    "dml": {"model_options": {"ablation": "DML"}},
    "dml-ws": {"model_options": {"ablation": "DML+WS"}},
    "dml-ws-mt": {"model_options": {"ablation": "DML+WS+MT"}},
}
TABLE4_VARIANTS = (("AGM", "agm"), ("NPM", "npm"), ("DML", "dml"), ("DML + WS", "dml-ws"),
                   ("DML + WS + MT", "dml-ws-mt"), ("DML + WS + MT + CL", ""))


@dataclass(frozen=True)
class RunSpec:
    """One training run of a reproduction: what is trained, not how long (that is the plan's)."""

    method: str = "eopnet"
    way: str = "k"
    fold: int = 1
    seed: int = 0
    dataset: str = "atr"
    variant: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", get_method(self.method).name)
        if self.way not in get_method(self.method).ways:
            raise ValueError(f"{get_method(self.method).display} runs {'/'.join(get_method(self.method).ways)}-way, "
                             f"not {self.way}-way")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown run variant {self.variant!r}; known: {sorted(VARIANTS)}")
        if self.variant and self.variant not in ("oracle", "scratch") and self.method != "eopnet":
            raise ValueError(f"variant {self.variant!r} switches EOP-Net modules; it does not apply to {self.method}")

    @property
    def name(self) -> str:
        tail = f"_{self.variant}" if self.variant else ""
        return f"{self.dataset}_{self.method}_{self.way}way_f{self.fold}_s{self.seed}{tail}"


@dataclass(frozen=True)
class ReproducePlan:
    """How a reproduction profile trains, evaluates and measures."""

    name: str
    train_profile: str
    train_overrides: dict[str, Any] = field(default_factory=dict)
    eval_max_pairs: int | None = None
    """Meta-test pairs per evaluation (class-balanced subset); None = all of them."""
    val_pairs_per_class: int = 0
    """Held-out pairs per class after every epoch of EOP-Net runs (the per-epoch accuracies of Fig. 7)."""
    synthetic: dict[str, Any] | None = None
    """How to generate the synthetic dataset when it is missing; None: real data, never generated."""
    data_root: str | None = None
    """Default data root (relative to the repository); None: required."""
    datasets: tuple[str, ...] = ("atr",)
    workers: int = 1
    """Runs trained at once (processes), each with cpu_count // workers threads."""
    table5: dict[str, Any] = field(default_factory=dict)
    """Table 5 settings: ``image_size``, ``paper_backbones`` (else the training profile's), benchmark settings."""
    description: str = ""
    figures_dir: str | None = None
    """Default figures folder (relative to the repository); None: OUT/figures. The demo writes the committed figures/."""

    def settings(self) -> dict[str, Any]:
        """What a result file records of the plan that produced it."""
        return {"profile": self.name, "train_profile": self.train_profile, "train_overrides": self.train_overrides,
                "eval_max_pairs": self.eval_max_pairs}


PLANS: dict[str, ReproducePlan] = {
    "smoke": ReproducePlan(
        "smoke", "smoke", eval_max_pairs=None, val_pairs_per_class=1,
        synthetic=dict(train=60, test=80, size=64, seed=3, meta={"train_query_pool": 30, "test_query_pool": 30,
                                                                 "queries_per_class": 1, "supports_per_query": 2}),
        data_root=None, workers=1,
        table5=dict(image_size=64, paper_backbones=False, bench=dict(batch_sizes=(1,), warmup=0, iters=1,
                                                                    max_time_s=1.0, sweep_budget_s=5.0,
                                                                    train_steps=1, fast_check_episodes=1)),
        description="seconds a run on a 60/80-image synthetic dataset at 64 px: checks that every notebook runs"),
    "demo": ReproducePlan(
        "demo", "quick", train_overrides=dict(epochs=3, pairs_per_epoch=200), eval_max_pairs=110,
        val_pairs_per_class=5, synthetic=dict(), data_root="data/synthetic", workers=2, figures_dir="figures",
        table5=dict(image_size=512, paper_backbones=True, bench=dict(batch_sizes=(1,), warmup=1, iters=2,
                                                                    max_time_s=10.0, sweep_budget_s=30.0,
                                                                    train_steps=0, fast_check_episodes=1)),
        description="the synthetic data, 3 epochs x 200 episodes a run (128 px, the shipped synthetic-pretrained "
                    "backbone), 110 meta-test pairs an evaluation: every table and figure in about 20 minutes on 2 "
                    "CPU cores"),
    "paper": ReproducePlan(
        "paper", "paper", eval_max_pairs=None, val_pairs_per_class=15, synthetic=None, data_root=None,
        datasets=("atr", "lip", "cihp"), workers=1,
        table5=dict(image_size=512, paper_backbones=True, bench=dict()),
        description="the paper's configuration on ATR-OS, LIP-OS and CIHP-OS: Xception-65, 512 px, 50 epochs; a GPU"),
}


def get_plan(profile: str | ReproducePlan, train_profile: str | None = None) -> ReproducePlan:
    """A reproduction profile's plan; ``train_profile`` swaps its training budget for a training profile's own
    (e.g. ``demo`` with the full single-run demo budget: hours on a CPU), with its own default output folder."""
    if isinstance(profile, ReproducePlan):
        plan = profile
    elif profile not in PLANS:
        raise ValueError(f"unknown reproduction profile {profile!r}; choose one of {', '.join(PLANS)}")
    else:
        plan = PLANS[profile]
    if train_profile and train_profile != plan.train_profile:
        from ..engine.config import PROFILES

        if train_profile not in PROFILES:
            raise ValueError(f"unknown training profile {train_profile!r}; choose one of {', '.join(PROFILES)}")
        plan = dataclasses.replace(plan, name=f"{plan.name}-{train_profile}", train_profile=train_profile,
                                   train_overrides={}, figures_dir=None)
    return plan


# ----------------------------------------------------------------------------------------------- paths
def repo_root(start: str | Path | None = None) -> Path:
    """The repository (the folder holding ``notebooks/`` and ``oshp/``) above ``start`` (default: the working
    directory), so notebooks work whether JupyterLab starts them in ``notebooks/`` or papermill at the top."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "oshp").is_dir():
            return folder
    return here


def shown_path(path: str | Path) -> str:
    """A path as a reader should see it: relative to the repository when inside it (no machine-specific prefix)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Paths:
    out: Path
    runs: Path
    figures: Path
    data: dict[str, Path]


def resolve_paths(profile: str | ReproducePlan, *, out_dir: str | Path | None = None,
                  data_root: str | Path | None = None, figures_dir: str | Path | None = None,
                  datasets: Sequence[str] | None = None) -> Paths:
    """Where a reproduction keeps runs and figures and reads its data, relative to the repository.

    ``data_root``: a dataset in the release layout, or (several datasets) a folder with one such folder per dataset
    (``atr``, ``lip``, ``cihp``, any case). Default: the plan's; for ``smoke`` a tiny dataset inside ``out_dir``.
    """
    plan = get_plan(profile)
    root = repo_root()
    absolute = lambda p: Path(p).expanduser() if Path(p).expanduser().is_absolute() else root / p  # noqa: E731
    out = absolute(out_dir or f"runs/reproduce/{plan.name}")
    chosen_figures = figures_dir or plan.figures_dir
    figures = absolute(chosen_figures) if chosen_figures else out / "figures"
    base = absolute(data_root) if data_root else (absolute(plan.data_root) if plan.data_root else
                                                  out / "data" if plan.synthetic is not None else None)
    if base is None:
        raise DatasetError(f"the {plan.name} profile needs real data: pass --data-root (a dataset prepared with "
                           f"`oshp prepare`, or a folder with one such folder per dataset: atr, lip, cihp)")
    names = tuple(datasets or plan.datasets)
    data = {}
    for name in names:
        sub = [c for c in (base / name, base / name.upper(), base / f"{name.upper()}_OS") if c.is_dir()]
        data[name] = sub[0] if sub and not (base / "list").is_dir() else base
    return Paths(out=out, runs=out / "runs", figures=figures, data=data)


@dataclass
class NotebookContext:
    """What a notebook works with: its plan, its folders, its trained runs (by spec) and the first dataset."""

    plan: ReproducePlan
    paths: Paths
    runs: dict[RunSpec, Path]
    seed: int
    dataset: str

    def run(self, method: str = "eopnet", way: str = "k", fold: int = 1, variant: str = "",
            dataset: str | None = None) -> Path:
        spec = RunSpec(method, way, fold, self.seed, dataset or self.dataset, variant)
        if spec not in self.runs:
            raise KeyError(f"run {spec.name} is not one of this notebook's runs")
        return self.runs[spec]

    def result(self, method: str = "eopnet", way: str = "k", fold: int = 1, variant: str = "", *,
               lower: bool = False, static_novel: bool = False) -> dict:
        """A run's metrics as this plan evaluates it (its number of meta-test pairs); see :func:`load_result`."""
        return load_result(self.run(method, way, fold, variant), lower=lower, static_novel=static_novel,
                           max_pairs=self.plan.eval_max_pairs)

    def results(self, specs: Iterable[RunSpec] | None = None) -> list[dict]:
        return [load_result(self.runs[s], max_pairs=self.plan.eval_max_pairs)
                for s in (specs if specs is not None else self.runs)]

    def describe(self) -> str:
        """What a notebook's setup cell prints: the profile and where runs and figures are (repository-relative)."""
        return (f"{self.plan.name} profile: {self.plan.description}\nruns in {shown_path(self.paths.runs)} | figures "
                f"and tables in {shown_path(self.paths.figures)}")

    def write_results(self, results: Sequence[dict], name: str) -> Path:
        """The per-run results behind a table, as FIGURES/name.json beside the plan that produced them."""
        return write_results(results, self.figure(name), self.plan.settings())

    def figure(self, name: str) -> Path:
        """Stem of a figure or table in the figures folder (``save_figure`` / ``write_table`` add suffixes)."""
        self.paths.figures.mkdir(parents=True, exist_ok=True)
        return self.paths.figures / name


def notebook(key: str, *, profile: str = "smoke", train_profile: str | None = None,
             data_root: str | Path | None = None, out_dir: str | Path | None = None,
             figures_dir: str | Path | None = None, datasets: Sequence[str] | None = None, seed: int = 0,
             workers: int | None = None, runs: Sequence[RunSpec] | None = None,
             progress: bool = True) -> NotebookContext:
    """Set a notebook up from its parameters: data present, its runs trained (or reused), folders known.
    ``runs`` replaces the notebook's own list of runs (the train-one-fold notebook trains what it is asked)."""
    plan = get_plan(profile, train_profile)
    paths = resolve_paths(plan, out_dir=out_dir, data_root=data_root, figures_dir=figures_dir, datasets=datasets)
    prepare_data(plan, paths, progress=progress)
    specs, lower = notebook_runs(key, list(paths.data), seed) if runs is None else (list(runs), [])
    trained = ensure_runs(specs, plan, paths, lower=lower, workers=workers, progress=progress)
    return NotebookContext(plan, paths, trained, seed, next(iter(paths.data)))


# ----------------------------------------------------------------------------------------------- data
def prepare_data(profile: str | ReproducePlan, paths: Paths, *, progress: bool = True) -> dict[str, Path]:
    """Make sure each dataset exists: generate the synthetic one when the plan says how, else check it is there."""
    from ..data.layout import ReleaseLayoutDataset, write_dataset_meta
    from ..data.synthetic import generate_synthetic

    plan = get_plan(profile)
    for name, root in paths.data.items():
        if (root / "list").is_dir():
            continue
        if plan.synthetic is None or name != "atr":
            raise DatasetError(f"no {name} dataset at {root}: prepare it with `oshp prepare --dataset {name} ...` "
                               f"(docs/data.md) and pass its folder with --data-root")
        if root.exists() and any(root.iterdir()):
            raise DatasetError(f"{root} exists but holds no dataset (no list/ folder); remove it or pass another "
                               f"--data-root")
        options = dict(plan.synthetic)
        meta = options.pop("meta", None)
        if progress:
            print(f"generating the synthetic dataset into {root} ...", file=sys.stderr, flush=True)
        ds = generate_synthetic(root, progress=progress, **options)
        if meta:  # a tiny dataset cannot give the release's 10 x 15 pairs per class: shrink the rule
            write_dataset_meta(root, {**ds.meta, **meta})
    for name, root in paths.data.items():
        ReleaseLayoutDataset.open(root)  # raises a clear error when the layout is broken
    return paths.data


# ----------------------------------------------------------------------------------------------- runs
def run_config(spec: RunSpec, plan: ReproducePlan, data_root: Path):
    """The TrainConfig of one run: the plan's training profile and budget, the run's method, fold, way, variant."""
    from ..engine.config import make_config

    values: dict[str, Any] = dict(plan.train_overrides)
    variant = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VARIANTS[spec.variant].items()}
    options = {**values.pop("model_options", {}), **variant.pop("model_options", {})}
    values.update(variant)
    values["val_pairs_per_class"] = plan.val_pairs_per_class if spec.method == "eopnet" else 0
    return make_config(plan.train_profile, data_root=str(data_root), fold=spec.fold, way=spec.way,
                       method=spec.method, seed=spec.seed, model_options=options, **values)


def _needs_static_novel(spec: RunSpec) -> bool:
    """Oracle runs of prototype-memory models are also scored by the one-shot test rule (``--static-novel``)."""
    return spec.variant == "oracle" and spec.method in ("eopnet", "popnet")


def _evaluations(lower: bool, static_novel: bool) -> list[tuple[bool, bool]]:
    """The (suppress_novel, static_novel) evaluations a run needs: the plain one, and the bounds asked for."""
    return [(False, False)] + [(True, False)] * lower + [(False, True)] * static_novel


def _done(run: Path, lower: bool, static_novel: bool = False, max_pairs: int | None = None) -> bool:
    from ..engine.run import metrics_name

    return all((run / metrics_name(*e, max_pairs=max_pairs)).is_file() for e in _evaluations(lower, static_novel))


def ensure_run(spec: RunSpec, profile: str | ReproducePlan, paths: Paths, *, lower: bool = False,
               progress: bool = True) -> Path:
    """Train and evaluate one run unless its metrics exist (``lower``: also the lower-bound evaluation; an oracle run
    of EOP-Net or POPNet is also scored with its novel classes from the support, ``metrics_static_novel.json``)."""
    from ..engine.evaluate import run_metrics
    from ..engine.train import train

    plan = get_plan(profile)
    run = paths.runs / spec.name
    static_novel = _needs_static_novel(spec)
    if _done(run, lower, static_novel, plan.eval_max_pairs):
        return run
    if not (run / "train.json").is_file():  # an interrupted run continues from its last epoch
        train(run_config(spec, plan, paths.data[spec.dataset]), run, resume=run.is_dir(), progress=progress)
    for suppress, static in _evaluations(lower, static_novel):
        run_metrics(run, max_pairs=plan.eval_max_pairs, progress=progress, suppress_novel=suppress, static_novel=static)
    return run


def _worker_init(threads: int, counter: Any, gpus: int) -> None:
    """Each worker process: its share of the CPU threads and, on a machine with several GPUs, a GPU of its own
    (worker i sees GPU i mod gpus), so that folds train in parallel, one per GPU."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    gpu = worker_gpu(index, gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    torch.set_num_threads(threads)


def worker_gpu(index: int, gpus: int, visible: str | None = None) -> str | None:
    """The CUDA_VISIBLE_DEVICES value of worker ``index`` when ``gpus`` GPUs are visible (None: leave it alone).
    An existing CUDA_VISIBLE_DEVICES list is honoured: the worker gets one of its entries."""
    if gpus <= 1:
        return None
    listed = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(gpus)]
    return listed[index % len(listed)]


def _ensure_in_worker(spec: RunSpec, plan: ReproducePlan, paths: Paths, lower: bool) -> tuple[RunSpec, float]:
    started = time.time()
    ensure_run(spec, plan, paths, lower=lower, progress=False)
    return spec, time.time() - started


def ensure_runs(specs: Iterable[RunSpec], profile: str | ReproducePlan, paths: Paths, *,
                lower: Iterable[RunSpec] = (), workers: int | None = None, progress: bool = True) -> dict[RunSpec, Path]:
    """Train and evaluate every run that has no metrics yet, ``workers`` at a time (separate processes, the CPU's
    threads shared among them); returns the run folder of each spec. ``lower``: specs that also need the
    lower-bound evaluation (novel classes suppressed)."""
    plan = get_plan(profile)
    specs = list(dict.fromkeys(specs))
    need_lower = set(lower)
    specs += [s for s in need_lower if s not in specs]
    todo = [s for s in specs if not _done(paths.runs / s.name, s in need_lower, _needs_static_novel(s),
                                          plan.eval_max_pairs)]
    workers = max(1, min(workers or plan.workers, len(todo) or 1))
    if todo and progress:
        print(f"{len(todo)} of {len(specs)} runs to train ({plan.name} profile, {workers} at a time) in {paths.runs}",
              file=sys.stderr, flush=True)
    if workers == 1:
        for i, spec in enumerate(todo):
            if progress:
                print(f"[{i + 1}/{len(todo)}] {spec.name}", file=sys.stderr, flush=True)
            ensure_run(spec, plan, paths, lower=spec in need_lower, progress=progress)
    elif todo:
        from tqdm import tqdm  # plain text: no widget warning in notebooks

        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        context = get_context("spawn")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(threads, context.Value("i", 0), gpus)) as pool:
            futures = [pool.submit(_ensure_in_worker, s, plan, paths, s in need_lower) for s in todo]
            with tqdm(total=len(todo), desc="runs", unit="run", disable=not progress, file=sys.stderr) as bar:
                for future in as_completed(futures):
                    spec, seconds = future.result()
                    bar.set_postfix_str(f"{spec.name} {seconds:.0f} s")
                    bar.update()
    return {s: paths.runs / s.name for s in specs}


def load_result(run: str | Path, *, lower: bool = False, static_novel: bool = False,
                max_pairs: int | None = None) -> dict:
    """A run's metrics.json (or the lower bound's, or an oracle's scored by the one-shot rule; ``max_pairs``: the
    evaluation on at most that many pairs) with its training wall time added."""
    from ..engine.run import metrics_name

    run = Path(run)
    path = run / metrics_name(lower, static_novel, max_pairs=max_pairs)
    if not path.is_file():
        raise DatasetError(f"no {path.name} in {run}; train it with oshp.study.reproduce.ensure_run (or `oshp reproduce`)")
    result = json.loads(path.read_text())
    result["metrics_file"] = path.name
    summary = run / "train.json"
    result["train_wall_time_s"] = json.loads(summary.read_text())["wall_time_s"] if summary.is_file() else None
    result["run"] = str(run)
    return result


# ----------------------------------------------------------------------------------------------- what each notebook needs
def table_specs(dataset: str = "atr", seed: int = 0) -> list[RunSpec]:
    """Tables 1-3: every method in the ways the paper reports it, both folds."""
    return [RunSpec(m, way, fold, seed, dataset) for way in ("k", "1") for m in METHODS for fold in (1, 2)
            if way in METHODS[m].ways]


def notebook_runs(notebook: str, datasets: Sequence[str] = ("atr",), seed: int = 0) -> tuple[list[RunSpec],
                                                                                               list[RunSpec]]:
    """The runs a notebook needs and those of them that also need the lower-bound evaluation."""
    main = datasets[0]
    eop = RunSpec("eopnet", "k", 1, seed, main)
    key = notebook.split("_")[0]
    if key == "00":
        return [], []
    if key == "01":
        return [eop, RunSpec("eopnet", "1", 1, seed, main), dataclasses.replace(eop, variant="oracle"),
                dataclasses.replace(eop, variant="scratch")], [eop]
    if key == "02":
        return [eop], []
    if key == "03":
        return [s for d in datasets for s in table_specs(d, seed)], []
    if key == "04":
        return [dataclasses.replace(eop, variant=v) for _, v in TABLE4_VARIANTS] + \
            [RunSpec("popnet", "k", 1, seed, main)], []
    if key == "05":
        return [], []
    if key == "06":
        return [eop, dataclasses.replace(eop, variant="no-dp")], []
    if key == "07":
        return [RunSpec(m, w, 1, seed, main) for w in ("k", "1") for m in ("eopnet", "popnet", "amp", "sgone",
                                                                            "finetuning")
                if w == "k" or m == "eopnet"], []
    raise ValueError(f"unknown notebook {notebook!r}; notebooks: {', '.join(NOTEBOOKS)}")


def all_runs(datasets: Sequence[str] = ("atr",), seed: int = 0,
             notebooks: Sequence[str] | None = None) -> tuple[list[RunSpec], list[RunSpec]]:
    """The runs of several notebooks (default: all), each once, and those that also need the lower bound."""
    runs: list[RunSpec] = []
    lower: list[RunSpec] = []
    for nb in notebooks or NOTEBOOKS:
        r, lo = notebook_runs(nb, datasets, seed)
        runs += r
        lower += lo
    return list(dict.fromkeys(runs)), list(dict.fromkeys(lower))


# ----------------------------------------------------------------------------------------------- the batch
def run_notebooks(profile: str, *, train_profile: str | None = None, out_dir: str | Path | None = None, data_root: str | Path | None = None,
                  figures_dir: str | Path | None = None, datasets: Sequence[str] | None = None, seed: int = 0,
                  workers: int | None = None, notebooks: Sequence[str] | None = None, kernel: str | None = None,
                  log: Callable[[str], None] = print) -> list[Path]:
    """Execute the notebooks with papermill into ``OUT/notebooks``, each given the parameters it declares (paths
    repository-relative where they can be, so that no machine's prefix ends up in a notebook)."""
    import papermill as pm

    root = repo_root()
    paths = resolve_paths(get_plan(profile, train_profile), out_dir=out_dir, data_root=data_root,
                          figures_dir=figures_dir, datasets=datasets)
    params = dict(profile=profile, train_profile=train_profile, out_dir=shown_path(paths.out),
                  figures_dir=shown_path(paths.figures), seed=seed, datasets=list(paths.data), workers=workers,
                  data_root=shown_path(data_root) if data_root else None)
    done = []
    for nb in notebooks or NOTEBOOKS:
        source = root / "notebooks" / nb
        if not source.is_file():
            raise FileNotFoundError(f"no notebook {source}; run `oshp reproduce` from a clone of the repository")
        target = paths.out / "notebooks" / nb
        target.parent.mkdir(parents=True, exist_ok=True)
        declared = pm.inspect_notebook(str(source))
        given = {k: v for k, v in params.items() if k in declared}
        if "data_root" in declared and given.get("data_root") is None:  # the data notebook looks at this data
            given["data_root"] = shown_path(paths.data[next(iter(paths.data))])
        started = time.time()
        log(f"notebook {nb} ...")
        pm.execute_notebook(str(source), str(target), parameters=given, cwd=str(root), kernel_name=kernel,
                            progress_bar=False, log_output=False)
        log(f"notebook {nb}: {time.time() - started:.0f} s -> {shown_path(target)}")
        done.append(target)
    return done


def publish_notebooks(executed: Sequence[Path], folder: str | Path | None = None) -> list[Path]:
    """Copy executed notebooks over the repository's own (``notebooks/``) as a reader should open them: the cell
    papermill injected is dropped (the parameters cell's defaults are the demo's), papermill's bookkeeping removed
    and the execution counts renumbered. The cells' sources are the repository's; only their outputs change."""
    import nbformat

    folder = Path(folder) if folder else repo_root() / "notebooks"
    written = []
    for path in executed:
        nb = nbformat.read(str(path), as_version=4)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        nb.metadata.pop("papermill", None)
        count = 0
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code":
                count += 1
                cell.execution_count = count
                for output in cell.get("outputs", []):
                    if "execution_count" in output:
                        output["execution_count"] = count
        target = folder / Path(path).name
        nbformat.write(nb, str(target))
        written.append(target)
    return written


def reproduce(profile: str = "demo", *, out_dir: str | Path | None = None, data_root: str | Path | None = None,
              figures_dir: str | Path | None = None, datasets: Sequence[str] | None = None, seed: int = 0,
              workers: int | None = None, train_profile: str | None = None, notebooks: Sequence[str] | None = None,
              kernel: str | None = None, progress: bool = True, publish: bool = False,
              log: Callable[[str], None] = print) -> dict:
    """Every run, then every notebook: what `oshp reproduce` does. Returns a summary (also OUT/reproduce.json).
    ``publish``: also copy the executed notebooks over the repository's (:func:`publish_notebooks`)."""
    plan = get_plan(profile, train_profile)
    paths = resolve_paths(plan, out_dir=out_dir, data_root=data_root, figures_dir=figures_dir, datasets=datasets)
    started = time.time()
    prepare_data(plan, paths, progress=progress)
    data_s = time.time() - started
    chosen = notebooks or NOTEBOOKS
    runs, lower = all_runs(list(paths.data), seed, chosen)
    ensure_runs(runs, plan, paths, lower=lower, workers=workers, progress=progress)
    runs_s = time.time() - started - data_s
    executed = run_notebooks(profile, train_profile=train_profile, out_dir=paths.out, data_root=data_root,
                             figures_dir=paths.figures, datasets=list(paths.data), seed=seed, workers=workers,
                             notebooks=chosen, kernel=kernel, log=log)
    if publish:
        publish_notebooks(executed)
    summary = {"profile": plan.name, "train_profile": plan.train_profile, "train_overrides": plan.train_overrides,
               "runs": len(runs), "notebooks": [str(p) for p in executed], "figures": str(paths.figures),
               "data_s": round(data_s, 1), "runs_s": round(runs_s, 1), "notebooks_s":
               round(time.time() - started - data_s - runs_s, 1), "wall_time_s": round(time.time() - started, 1),
               "cpu_count": os.cpu_count(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    paths.out.mkdir(parents=True, exist_ok=True)
    (paths.out / "reproduce.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------- Table 5
def measure_table5(profile: str | ReproducePlan, *, ways: int = 5, device: str = "auto",
                   log: Callable[[str], None] | None = None) -> dict:
    """Table 5 on this machine: every method's parameters and inference GMACs (one query + one support, ``ways``
    support classes) and its measured pairs per second (``oshp.benchmark``), at the plan's image size; with the
    paper's backbones unless the plan says otherwise (smoke: its own small ones)."""
    from ..profiling.benchmark import run_benchmark
    from ..profiling.complexity import complexity
    from ..engine.config import make_config

    plan = get_plan(profile)
    t5 = plan.table5
    source = "paper" if t5.get("paper_backbones") else plan.train_profile
    complexities = []
    for name, m in METHODS.items():
        cfg = make_config(source, method=name, way="k" if "k" in m.ways else m.ways[0])
        if log:
            log(f"counting {m.display} ({cfg.backbone}, {t5['image_size']} px)")
        complexities.append(complexity(name, image_size=t5["image_size"], ways=ways, backbone=cfg.backbone,
                                       way=cfg.way, **cfg.model_options))
    bench = run_benchmark(profile=source, method="all", image_size=t5["image_size"], ways=ways, device=device,
                          log=log, **t5.get("bench", {}))
    return {"complexities": complexities, "benchmark": bench, "profile": plan.name, "settings_from": source,
            "image_size": t5["image_size"], "ways": ways}


