"""Regenerate every table and figure: train the runs the notebooks need (each once, in parallel processes, one GPU
per worker), then execute the notebooks with papermill; and what a notebook's setup cell calls.

A run is identified by :class:`oshp.study.plans.RunSpec` and lives in ``OUT/runs/<name>``; a run that finished
training is never trained again and an evaluation whose file exists is never redone, so an interrupted
reproduction resumes, and the notebooks share runs (Table 4's full model is Table 1's EOP-Net, Fig. 7's is the same).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..core.errors import DatasetError
from ..models.registry import METHODS
from ..report.figures import write_results
from ..data.layout import ReleaseLayoutDataset, write_dataset_meta
from ..data.synth.generate import generate_synthetic
from ..engine.config import TrainConfig, config_from_dict, make_config
from ..engine.run import CONFIG, metrics_name
from ..engine.evaluate import run_metrics
from ..engine.train import train
from ..profiling.benchmark import run_benchmark
from ..profiling.complexity import complexity
from .plans import NOTEBOOKS, Paths, notebook_name, ReproducePlan, RunSpec, VARIANTS, all_runs, get_plan, notebook_runs, repo_root, resolve_paths, shown_path

__all__ = ["prepare_data", "run_config", "ensure_run", "ensure_runs", "in_worker_processes", "off_plan_notes", "load_result", "run_notebooks", "publish_notebooks",
           "reproduce", "notebook", "NotebookContext", "measure_table5"]


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


RUN_PLACE_SETTINGS = ("data_root", "dataset", "device", "workers", "amp")
"""Settings that say where and how fast a run trained, not what it learnt: a run is reused whatever they were."""


def changed_settings(run: Path, expected: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The settings a run folder was trained with that differ from ``expected`` ({name: (run's, expected)}), e.g.
    after an update of oshp changed a method's learning rate; {} for a folder without a config."""
    try:
        saved = config_from_dict(json.loads((run / CONFIG).read_text())).to_json()
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise DatasetError(f"{run / CONFIG} is unreadable ({err}); delete {run} to train it again") from err
    wanted = expected.to_json()
    return {k: (saved.get(k), v) for k, v in wanted.items() if k not in RUN_PLACE_SETTINGS and saved.get(k) != v}


def off_plan_notes(specs: Iterable[RunSpec], plan: ReproducePlan, paths: Paths) -> list[str]:
    """One line for each finished or started run trained with other settings than the plan's (e.g. by an older oshp
    whose learning rates differ, or by hand with a shorter budget). Such a run is still reused, as every finished
    run is; the lines say what differs and how to retrain it."""
    lines = []
    for spec in specs:
        run = paths.runs / spec.name
        changed = changed_settings(run, run_config(spec, plan, paths.data[spec.dataset]))
        if changed:
            said = ", ".join(f"{k}={a!r} (plan: {b!r})" for k, (a, b) in sorted(changed.items()))
            lines.append(f"note: reusing {run}, trained with other settings than the {plan.name} plan's: {said}; "
                         f"delete that folder to train it with the plan's settings")
    return lines


def _done(run: Path, lower: bool, static_novel: bool = False, max_pairs: int | None = None) -> bool:

    return all((run / metrics_name(*e, max_pairs=max_pairs)).is_file() for e in _evaluations(lower, static_novel))


def ensure_run(spec: RunSpec, profile: str | ReproducePlan, paths: Paths, *, lower: bool = False,
               progress: bool = True) -> Path:
    """Train and evaluate one run unless its metrics exist (``lower``: also the lower-bound evaluation; an oracle run
    of EOP-Net or POPNet is also scored with its novel classes from the support, ``metrics_static_novel.json``)."""

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


def _ensure_in_worker(spec: RunSpec, plan: ReproducePlan, paths: Paths, lower: bool) -> tuple[str, float]:
    started = time.time()
    ensure_run(spec, plan, paths, lower=lower, progress=False)
    return spec.name, time.time() - started


def in_worker_processes(job: Callable[..., tuple[str, float]], arguments: Sequence[tuple], workers: int, *,
                        progress: bool = True) -> None:
    """Call ``job(*args)`` for each tuple of ``arguments`` in ``workers`` separate processes, the CPU's threads (and
    the GPUs) shared among them; ``job`` returns (name, seconds) for the progress bar."""
    from tqdm import tqdm  # plain text: no widget warning in notebooks

    import torch

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = get_context("spawn")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(threads, context.Value("i", 0), gpus)) as pool:
        futures = [pool.submit(job, *args) for args in arguments]
        with tqdm(total=len(futures), desc="runs", unit="run", disable=not progress, file=sys.stderr) as bar:
            for future in as_completed(futures):
                name, seconds = future.result()
                bar.set_postfix_str(f"{name} {seconds:.0f} s")
                bar.update()


def ensure_runs(specs: Iterable[RunSpec], profile: str | ReproducePlan, paths: Paths, *,
                lower: Iterable[RunSpec] = (), workers: int | None = None, progress: bool = True) -> dict[RunSpec, Path]:
    """Train and evaluate every run that has no metrics yet, ``workers`` at a time (separate processes, the CPU's
    threads shared among them); returns the run folder of each spec. ``lower``: specs that also need the
    lower-bound evaluation (novel classes suppressed)."""
    plan = get_plan(profile)
    specs = list(dict.fromkeys(specs))
    need_lower = set(lower)
    specs += [s for s in need_lower if s not in specs]
    for line in off_plan_notes(specs, plan, paths):
        print(line, file=sys.stderr, flush=True)
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
        in_worker_processes(_ensure_in_worker, [(s, plan, paths, s in need_lower) for s in todo], workers,
                            progress=progress)
    return {s: paths.runs / s.name for s in specs}


def load_result(run: str | Path, *, lower: bool = False, static_novel: bool = False,
                max_pairs: int | None = None) -> dict:
    """A run's metrics.json (or the lower bound's, or an oracle's scored by the one-shot rule; ``max_pairs``: the
    evaluation on at most that many pairs) with its training wall time added."""

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
    for nb in (NOTEBOOKS[notebook_name(n)] for n in notebooks or NOTEBOOKS):
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
    support classes) and its measured pairs per second (``oshp.profiling.benchmark``), at the plan's image size; with the
    paper's backbones unless the plan says otherwise (smoke: its own small ones)."""

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


