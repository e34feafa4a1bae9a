"""Set-up stays consistent: pinned versions agree, CI runs the README's test command, package data ships."""

import re
import runpy
import tomllib

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def pins(lines):
    return dict(m.groups() for m in (PIN.match(line.strip()) for line in lines) if m)


def test_environment_yml_pins_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    py_pins = pins(declared)
    assert len(py_pins) == len(declared), "every dependency in pyproject.toml must be pinned with =="
    env_lines = [line.strip().removeprefix("- ").strip() for line in (ROOT / "environment.yml").read_text().splitlines()]
    env_pins = pins(env_lines)
    assert env_pins == py_pins
    assert py_pins["torch"] == "2.14.1" and py_pins["torchvision"] == "0.29.1"  # known to work together


def test_ci_runs_the_readme_test_command():
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert commands[-1] == "make test"
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_design_card_layout():
    for name in ("README.md", "environment.yml", "pyproject.toml", "notebooks", "oshp", "figures", "tests", ".ci/run"):
        assert (ROOT / name).exists(), name


def test_official_files_are_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["oshp.data"]
    shipped = {str(p.relative_to(ROOT / "oshp" / "data")) for p in (ROOT / "oshp" / "data" / "official").rglob("*")
               if p.is_file()}
    from fnmatch import fnmatch

    assert all(any(fnmatch(f, pattern) for pattern in data) for f in shipped)


BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_scripts_load_and_parse_their_flags(script, monkeypatch, capsys):
    """Every benchmark script loads against the package as it is and builds its flags (`--help`), so that a name
    that moved in the package fails here rather than in a user's hands; nothing is measured."""
    namespace = runpy.run_path(str(script), run_name="benchmark_import_check")  # main() is not run on import
    monkeypatch.setattr("sys.argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as done:
        namespace["main"]()
    assert done.value.code == 0 and "usage" in capsys.readouterr().out
