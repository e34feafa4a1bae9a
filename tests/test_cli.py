"""The `oshp` command: help for every subcommand and clear errors for bad input."""

import subprocess
import sys

import pytest

from oshp.cli import build_parser, main

SUBCOMMANDS = ("synth", "prepare", "check-data", "pairs", "show", "train", "evaluate", "parse", "complexity", "benchmark")


def test_every_subcommand_has_help(capsys):
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: oshp {name}" in capsys.readouterr().out
    assert set(SUBCOMMANDS) <= set(build_parser()._subparsers._group_actions[0].choices)


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "oshp", "--help"], capture_output=True, text=True, check=True)
    assert "check-data" in out.stdout


def test_missing_data_root_is_a_clear_error(tmp_path, capsys):
    code = main(["show", "--data-root", str(tmp_path / "nowhere"), "--dataset", "atr", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not exist" in err and "oshp synth --out" in err and "oshp prepare" in err
    assert "Traceback" not in err


def test_dataset_without_vocabulary_asks_for_it(tmp_path, capsys):
    (tmp_path / "list").mkdir()
    assert main(["show", "--data-root", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "--dataset atr|lip|cihp" in capsys.readouterr().err


def test_train_and_pretrain_flags_come_from_the_configuration_dataclasses():
    from oshp.engine.config import PretrainConfig, TrainConfig, cli_fields

    parser = build_parser()
    train = parser.parse_args(["train", "--fold", "1", "--out", "r", "--batch-size", "3", "--label-novel"])
    assert train.batch_size == 3 and train.label_novel is True
    assert all(getattr(train, f.name) is None for f in cli_fields(TrainConfig) if f.name not in ("batch_size",
                                                                                                "label_novel"))
    pretrain = parser.parse_args(["pretrain", "--out", "o"])
    assert {f.name: getattr(pretrain, f.name) for f in cli_fields(PretrainConfig)} == \
        {f.name: f.default for f in cli_fields(PretrainConfig)}
