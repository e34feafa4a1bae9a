"""The paper's experiment matrix on this code base: which runs exist (method, way, fold, seed, dataset, variant), how
long each reproduction profile trains them, where they live, and which runs each notebook needs.

Loads no torch: the CLI's parser reads the profiles and notebooks from here.

A reproduction profile is a training budget plus the data it runs on:

- ``smoke``: a tiny synthetic dataset generated into the output folder and the ``smoke`` training profile (seconds
  a run). The tests run the notebooks this way; the numbers check that nothing breaks and mean nothing.
- ``demo``: the synthetic dataset (``oshp synth``; generated when missing) and the single-run ``demo`` training
  budget (`oshp train --profile demo`), so that every run of every notebook (34 runs) fits in about 20 minutes on a
  2-core CPU. ``--train-profile quick`` halves it.
- ``paper``: the real datasets and the paper's configuration (``paper`` training profile), meant for GPUs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..core.errors import DatasetError
from ..engine.config import PROFILES
from ..models.registry import METHODS, get_method


NOTEBOOKS: dict[str, str] = {
    "data": "00_oshp_data.ipynb", "tour": "01_tour.ipynb", "train_one_fold": "02_train_one_fold.ipynb",
    "tables_1_3": "03_tables_1_3.ipynb", "table4_ablation": "04_table4_ablation.ipynb",
    "table5_complexity": "05_table5_complexity.ipynb", "fig7_dynamic_prototypes": "06_fig7_dynamic_prototypes.ipynb",
    "figs4_6_parses": "07_figs4_6_parses.ipynb",
}
"""The notebooks by name (what the code refers to them by) and their files in notebooks/, in reading order."""


def notebook_name(key: str) -> str:
    """A notebook's name from its name, its file name, or its number ("03"): what `--notebooks` accepts."""
    for name, file in NOTEBOOKS.items():
        if key in (name, file, file.split("_")[0], file.removesuffix(".ipynb")):
            return name
    raise ValueError(f"unknown notebook {key!r}; notebooks: {', '.join(f'{n} ({f})' for n, f in NOTEBOOKS.items())}")


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
        "demo", "demo", eval_max_pairs=330, val_pairs_per_class=5, synthetic=dict(), data_root="data/synthetic",
        workers=2, figures_dir="figures",
        table5=dict(image_size=512, paper_backbones=True, bench=dict(batch_sizes=(1,), warmup=1, iters=2,
                                                                    max_time_s=10.0, sweep_budget_s=30.0,
                                                                    train_steps=0, fast_check_episodes=1)),
        description="the synthetic data and the single-run demo budget (6 epochs x 400 episodes a run on 64 px "
                    "crops, the shipped synthetic-pretrained backbone), 330 meta-test pairs an evaluation: every "
                    "table and figure in about 20 minutes on 2 CPU cores"),
    "paper": ReproducePlan(
        "paper", "paper", eval_max_pairs=None, val_pairs_per_class=15, synthetic=None, data_root=None,
        datasets=("atr", "lip", "cihp"), workers=1,
        table5=dict(image_size=512, paper_backbones=True, bench=dict()),
        description="the paper's configuration on ATR-OS, LIP-OS and CIHP-OS: Xception-65, 512 px, 50 epochs; a GPU"),
}


def get_plan(profile: str | ReproducePlan, train_profile: str | None = None) -> ReproducePlan:
    """A reproduction profile's plan; ``train_profile`` swaps its training budget for a training profile's own
    (e.g. ``quick``: half the demo's budget), with its own default output folder."""
    if isinstance(profile, ReproducePlan):
        plan = profile
    elif profile not in PLANS:
        raise ValueError(f"unknown reproduction profile {profile!r}; choose one of {', '.join(PLANS)}")
    else:
        plan = PLANS[profile]
    if train_profile and train_profile != plan.train_profile:

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


# ----------------------------------------------------------------------------------------------- what each notebook needs
def table_specs(dataset: str = "atr", seed: int = 0) -> list[RunSpec]:
    """Tables 1-3: every method in the ways the paper reports it, both folds."""
    return [RunSpec(m, way, fold, seed, dataset) for way in ("k", "1") for m in METHODS for fold in (1, 2)
            if way in METHODS[m].ways]


def notebook_runs(notebook: str, datasets: Sequence[str] = ("atr",), seed: int = 0) -> tuple[list[RunSpec],
                                                                                               list[RunSpec]]:
    """The runs a notebook (by name, file or number) needs, and those of them that also need the lower bound."""
    main = datasets[0]
    eop = RunSpec("eopnet", "k", 1, seed, main)
    name = notebook_name(notebook)
    if name in ("data", "table5_complexity"):
        return [], []
    if name == "tour":
        return [eop, RunSpec("eopnet", "1", 1, seed, main), dataclasses.replace(eop, variant="oracle"),
                dataclasses.replace(eop, variant="scratch")], [eop]
    if name == "train_one_fold":
        return [eop], []
    if name == "tables_1_3":
        return [s for d in datasets for s in table_specs(d, seed)], []
    if name == "table4_ablation":
        return [dataclasses.replace(eop, variant=v) for _, v in TABLE4_VARIANTS] + \
            [RunSpec("popnet", "k", 1, seed, main)], []
    if name == "fig7_dynamic_prototypes":
        return [eop, dataclasses.replace(eop, variant="no-dp")], []
    return [RunSpec(m, w, 1, seed, main) for w in ("k", "1") for m in ("eopnet", "popnet", "amp", "sgone", "finetuning")
            if w == "k" or m == "eopnet"], []  # figs4_6_parses


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
