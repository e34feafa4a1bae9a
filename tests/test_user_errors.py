"""What a user meets at the command line: no lost files, no mixed run folders, one line per error and no traceback."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oshp.cli import main
from oshp.data.layout import read_dataset_meta, save_label_map, write_dataset_meta
from oshp.data.pairs import build_meta_test_pairs
from oshp.data.vocab import merge_labels

pytestmark = pytest.mark.usefixtures("single_thread")


def _error(capsys) -> str:
    """The one line a failed command printed (and that it printed no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def run(tiny_synthetic, tmp_path_factory, single_thread) -> Path:
    """An EOP-Net smoke run trained through the CLI, as a user would."""
    out = tmp_path_factory.mktemp("cli") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. 'Converting a tensor with requires_grad=True to a scalar'
        assert main(["train", "--quiet", "--profile", "smoke", "--data-root", str(tiny_synthetic.root), "--fold", "1",
                     "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def support_files(tiny_synthetic, tmp_path_factory) -> dict[str, Path]:
    """A query, and a support image with its raw mask showing legs, as files of the user's own."""
    folder = tmp_path_factory.mktemp("mine")
    ds = tiny_synthetic
    legs = ds.spec.class_id("legs")
    with_legs = [i for i in ds.ids("test") if legs in merge_labels(ds.load_label(i), ds.spec)]
    support, query = with_legs[0], with_legs[1]
    Image.fromarray(ds.load_image(query)).save(folder / "query.png")
    Image.fromarray(ds.load_image(support)).save(folder / "support.png")
    save_label_map(folder / "support_mask.png", ds.load_label(support))
    return {"query": folder / "query.png", "support": folder / "support.png", "mask": folder / "support_mask.png"}


def _parse(run: Path, files: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["parse", "--quiet", "--checkpoint", str(run), "--query", str(files["query"]), "--support",
                 str(files["support"]), "--support-mask", str(files["mask"]), "--out", str(out), *extra])


# ----------------------------------------------------------------------------------------------- parse
def test_parse_refuses_to_overwrite_the_query(run, support_files, capsys):
    before = support_files["query"].read_bytes()
    assert _parse(run, support_files, support_files["query"]) == 2
    assert "would overwrite your --query" in _error(capsys)
    assert support_files["query"].read_bytes() == before


def test_parse_takes_a_run_folder_and_background_and_draws_a_legend(run, support_files, tmp_path, capsys):
    out = tmp_path / "parse.png"
    assert _parse(run, support_files, out, "--classes", "legs,background") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == ["legs"] and set(result["colours"]) == {"legs"}
    assert result["colours"]["legs"].startswith("#") and len(result["colours"]["legs"]) == 7
    query = np.asarray(Image.open(support_files["query"]))
    overlay = np.asarray(Image.open(out))
    assert overlay.shape[0] >= query.shape[0] and overlay.shape[1] > query.shape[1]  # the legend panel
    assert (tmp_path / "parse_labels.png").is_file()


def test_parse_names_the_flag_of_a_bad_input(run, support_files, tmp_path, capsys):
    folder_as_support = dict(support_files, support=support_files["support"].parent)
    assert _parse(run, folder_as_support, tmp_path / "p.png") == 2
    assert "--support" in (err := _error(capsys)) and "is a folder" in err
    missing_query = dict(support_files, query=tmp_path / "nope.png")
    assert _parse(run, missing_query, tmp_path / "p.png") == 2
    err = _error(capsys)
    assert "--query" in err and "nope.png" in err and "check-data" not in err
    assert _parse(run, support_files, tmp_path) == 2  # a folder as the overlay file
    assert "is a folder" in _error(capsys)


# ----------------------------------------------------------------------------------------------- run folders
def test_a_run_folder_never_mixes_two_trainings(run, tiny_synthetic, capsys):
    code = main(["train", "--quiet", "--profile", "smoke", "--data-root", str(tiny_synthetic.root), "--fold", "1",
                 "--out", str(run)])
    assert code == 2
    assert "holds a run already" in (err := _error(capsys)) and "--resume" in err


def test_partial_evaluations_have_their_own_name_and_max_pairs_is_a_maximum(run, capsys):
    assert main(["evaluate", "--quiet", "--run", str(run), "--max-pairs", "2"]) == 0
    capsys.readouterr()
    partial = json.loads((run / "metrics_max-pairs-2.json").read_text())
    assert partial["num_pairs"] == 2
    assert not (run / "metrics.json").exists()  # the full evaluation is not stood in for


def test_a_run_stores_its_data_root_absolute_and_can_be_relocated(run, tiny_synthetic, tmp_path, monkeypatch, capsys):
    config = json.loads((run / "config.json").read_text())
    assert Path(config["data_root"]).is_absolute()
    monkeypatch.chdir(tmp_path)  # evaluated from elsewhere
    assert main(["evaluate", "--quiet", "--run", str(run), "--max-pairs", "1"]) == 0
    capsys.readouterr()
    moved = tmp_path / "moved"
    shutil.copytree(tiny_synthetic.root, moved)
    broken = tmp_path / "broken_run"
    shutil.copytree(run, broken)
    import torch

    ckpt = torch.load(broken / "checkpoint.pt", weights_only=False)  # as if the dataset had moved since training
    ckpt["config"]["data_root"] = str(tmp_path / "gone")
    torch.save(ckpt, broken / "checkpoint.pt")
    assert main(["evaluate", "--quiet", "--run", str(broken), "--max-pairs", "1"]) == 2
    assert "--data-root" in _error(capsys)
    assert main(["evaluate", "--quiet", "--run", str(broken), "--max-pairs", "1", "--data-root", str(moved)]) == 0


def test_evaluate_refuses_a_checkpoint_of_another_method(run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "method": "amp"}))
    assert main(["evaluate", "--quiet", "--run", str(other), "--max-pairs", "1"]) == 2
    assert "does not belong to run" in (err := _error(capsys)) and "method='eopnet'" in err


# ----------------------------------------------------------------------------------------------- files and folders
def test_folders_and_files_in_the_wrong_place(run, tiny_synthetic, tmp_path, capsys):
    assert main(["pairs", "--quiet", "--dataset", "atr", "--out", str(tmp_path)]) == 2
    assert "is a folder" in _error(capsys)
    assert main(["evaluate", "--quiet", "--run", str(run), "--pairs", str(tmp_path)]) == 2
    assert "is a folder" in _error(capsys)
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    assert main(["train", "--quiet", "--profile", "smoke", "--data-root", str(tiny_synthetic.root), "--fold", "1",
                 "--out", str(a_file)]) == 2
    assert "is a file" in _error(capsys)
    assert a_file.read_text() == "mine"


def test_show_into_a_folder_reports_the_file_it_wrote(tiny_synthetic, tmp_path, capsys):
    assert main(["show", "--quiet", "--data-root", str(tiny_synthetic.root), "--count", "2", "--out",
                 str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()[-1]
    assert Path(written) == tmp_path / "samples.png" and Path(written).is_file()


def test_a_closed_pipe_is_quiet(monkeypatch, capsys):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

        def fileno(self):
            raise io.UnsupportedOperation("no file descriptor")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["pairs", "--quiet", "--dataset", "atr", "--out", "/dev/null"]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_during_training_says_how_to_continue(monkeypatch, tiny_synthetic, tmp_path, capsys):
    import oshp.engine.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(oshp.engine.train, "train", interrupted)
    code = main(["train", "--quiet", "--profile", "smoke", "--data-root", str(tiny_synthetic.root), "--fold", "1",
                 "--out", str(tmp_path / "r")])
    assert code == 130
    assert "--resume" in _error(capsys)


# ----------------------------------------------------------------------------------------------- weights
def test_backbone_weights_of_another_backbone_or_a_run_checkpoint(run, tmp_path):
    from oshp.engine.config import PretrainConfig
    from oshp.models.backbone import DeepLabFeatures
    from oshp.engine.pretrain import save_backbone

    other = DeepLabFeatures("mobilenetv3_small_050")
    path = tmp_path / "backbone.pt"
    save_backbone(other, path, PretrainConfig(backbone="mobilenetv3_small_050"))
    with pytest.raises(ValueError) as err:
        DeepLabFeatures("mobilenetv3_small_100", weights=path)
    assert "'mobilenetv3_small_050'" in str(err.value) and "'mobilenetv3_small_100'" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError) as err:
        DeepLabFeatures("mobilenetv3_small_050", weights=run / "checkpoint.pt")
    assert "not a plain weights file" in str(err.value) and "\n" not in str(err.value)


def test_backbone_weights_error_is_one_line_at_the_cli(run, tiny_synthetic, tmp_path, capsys):
    code = main(["train", "--quiet", "--profile", "smoke", "--data-root", str(tiny_synthetic.root), "--fold", "1",
                 "--out", str(tmp_path / "r"), "--backbone-weights", str(run / "checkpoint.pt")])
    assert code == 2
    assert "not a plain weights file" in _error(capsys)


# ----------------------------------------------------------------------------------------------- data
def test_check_data_reports_the_pair_rule_and_the_fix_that_exists(tiny_synthetic, tmp_path, capsys):
    root = tmp_path / "ds"
    shutil.copytree(tiny_synthetic.root, root)
    assert main(["check-data", "--quiet", "--data-root", str(root)]) == 0  # its own small rule can be met
    capsys.readouterr()
    meta = read_dataset_meta(root)
    write_dataset_meta(root, {k: v for k, v in meta.items() if k not in ("queries_per_class", "supports_per_query")})
    assert main(["check-data", "--quiet", "--data-root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "meta-test pairs cannot be drawn" in out and "queries_per_class" in out
    with pytest.raises(Exception) as err:  # what train and evaluate meet: the fix it names exists
        build_meta_test_pairs("atr", root)
    message = str(err.value)
    assert "oshp synth --queries-per-class" in message and "--queries-per-class / --supports-per-query" not in message
    assert "class '" in message  # named, not numbered


def test_synth_writes_the_pair_rule_it_is_given(tmp_path, capsys):
    root = tmp_path / "syn"
    assert main(["synth", "--quiet", "--out", str(root), "--train", "4", "--test", "4", "--size", "64", "--workers",
                 "1", "--queries-per-class", "1", "--supports-per-query", "2"]) == 0
    meta = read_dataset_meta(root)
    assert meta["queries_per_class"] == 1 and meta["supports_per_query"] == 2


def test_check_data_on_an_empty_folder_says_so(tmp_path, capsys):
    assert main(["check-data", "--quiet", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "empty" in out and "--dataset" not in out.split("fix:")[0]


def test_pairs_cites_a_file_that_exists():
    import oshp

    source = build_meta_test_pairs("atr")["source"]
    cited = source.split("oshp: ")[1].rstrip(")")
    assert (Path(oshp.__file__).parent.parent / cited).is_file()


# ----------------------------------------------------------------------------------------------- help
def test_help_imports_no_torch():
    code = ("import sys\nfrom oshp.cli import build_parser\nbuild_parser()\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'timm', 'papermill') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_help_names_profiles_budgets_and_methods(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for word in ("quick:", "smoke:", "about a minute", "eopnet", "pfenet", "popnet"):
        assert word in out


def test_a_mismatched_checkpoint_is_summarised_in_one_line(tmp_path):
    import torch

    from oshp.core.errors import DatasetError
    from oshp.engine.config import make_config
    from oshp.engine.run import load_model_state, model_from_config

    model = model_from_config(make_config("smoke"), 18)
    state = dict(model.state_dict())
    dropped = next(iter(state))
    del state[dropped]
    state["stray.weight"] = torch.zeros(1)
    with pytest.raises(DatasetError) as err:
        load_model_state(model, state, tmp_path / "checkpoint.pt")
    text = str(err.value)
    assert "\n" not in text and f"1 missing keys (first: {dropped})" in text and "1 unexpected keys" in text
