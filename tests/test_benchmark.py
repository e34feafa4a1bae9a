"""`oshp benchmark`, FLOP counting, the cached-support path of EOP-Net and `oshp parse` over a folder.

No timing is asserted anywhere: speeds belong in benchmark outputs, never in tests.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from oshp.profiling.benchmark import run_benchmark
from oshp.profiling.fastpath import check_run_episodes, fast_path_check
from oshp.profiling.flops import flop_counter, inference_flops, train_step_flops
from oshp.models.dummy import band_episode
from oshp.cli import main
from oshp.models.registry import METHODS
from oshp.models.eopnet import EOPNet, EOPNetConfig, SupportCache
from oshp.engine.config import make_config
from oshp.engine.run import CHECKPOINT, model_from_config
from oshp.engine.train import train

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = "mobilenetv3_small_050"
QUICK = ["--batch-sizes", "1,2", "--iters", "1", "--warmup", "1", "--train-steps", "1", "--peak-matmul", "256"]


def tiny(**kw) -> EOPNet:
    torch.manual_seed(0)
    return EOPNet(EOPNetConfig(backbone=TINY, embed_dim=32, **kw)).eval()


# ---------------------------------------------------------------------------------------------------- benchmark
def test_benchmark_cli_writes_json_with_floor(tmp_path, capsys):
    out = tmp_path / "bench" / "smoke.json"
    assert main(["benchmark", "--profile", "smoke", *QUICK, "--note", "test run", "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| method | path | batch | pairs/s |" in table and "cached support" in table and "training step" in table
    result = json.loads(out.read_text())
    assert {"device", "pairs_per_s", "floor", "ratio_to_floor", "versions", "settings"} <= set(result)
    assert set(result["methods"]) == set(METHODS)  # --method all: every method of the registry
    assert result["settings"]["image_size"] == make_config("smoke").image_size and result["settings"]["ways"] == 5
    assert result["note"] == "test run" and result["versions"]["torch"] == torch.__version__
    floor = result["floor"]["eopnet"]
    assert floor["peak_flops"] > 0 and floor["peak_dtype"] == "float32"
    assert floor["train_flops"] > floor["inference_flops"] > floor["cached_inference_flops"] > 0
    for key, ratio in result["ratio_to_floor"]["eopnet"].items():
        assert ratio is not None and ratio > 0, key
    for key, rate in result["pairs_per_s"]["eopnet"].items():
        assert rate is not None and rate > 0, key
    eop = result["methods"]["eopnet"]
    assert [r["batch"] for r in eop["inference"]["sweep"]] == [1, 2] and eop["cached"]["support_encode_s"] > 0
    assert eop["train"]["batch"] == make_config("smoke").batch_size and eop["peak_memory_mb"] > 0
    check = result["fast_path_check"]["eopnet"]  # the CPU fast path is the fp32 path
    assert check["applies"] is False and check["passed"] is True and "by construction" in check["reason"]


def test_benchmark_rejects_bad_settings(tmp_path, capsys):
    assert main(["benchmark", "--profile", "smoke", "--batch-sizes", "1,x", "--out", str(tmp_path / "b.json"),
                 "--quiet"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown method"):
        run_benchmark(profile="smoke", method="nonet")
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        run_benchmark(profile="smoke", batch_sizes=(0, 1))


def test_training_measurement_can_be_skipped():
    """Table 5 needs inference only: train_steps=0 skips the training step (a paper-size one takes a CPU minute)."""
    with pytest.raises(ValueError, match="train_steps"):
        run_benchmark(profile="smoke", train_steps=-1)
    result = run_benchmark(profile="smoke", method="amp", batch_sizes=(1,), iters=1, warmup=0, train_steps=0,
                           peak_matmul_n=128, fast_check_episodes=1, max_time_s=1.0)
    amp = result["methods"]["amp"]
    assert amp["train"]["skipped"] == "train_steps=0" and amp["pairs_per_s"]["train"] is None
    assert amp["pairs_per_s"]["inference_batch1"] > 0 and amp["floor"]["train_flops"] is None


def test_training_step_counts_more_flops_than_inference():
    model = model_from_config(make_config("smoke"), 18)
    batch = band_episode(2, 64, 5)
    inference = inference_flops(model, batch)
    cached = inference_flops(model, batch, cached=True)
    step = train_step_flops(model, batch)
    assert step > inference > cached > 0
    # training runs AGM too and the backward costs about twice the forward
    assert step > 2 * inference


def test_flop_counter_counts_grouped_conv_backward_as_twice_forward():
    """torch's own formula counts a depthwise conv's weight gradient `groups` times over (pytorch#183405)."""
    for conv in (nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.Conv2d(16, 8, 3, padding=1, bias=False),
                 nn.ConvTranspose2d(16, 8, 2, stride=2, groups=4, bias=False)):
        x = torch.randn(2, 16, 8, 8, requires_grad=True)
        forward, backward = flop_counter(), flop_counter()
        with forward:
            y = conv(x)
        with backward:
            y.sum().backward()
        assert backward.get_total_flops() == 2 * forward.get_total_flops(), conv


@pytest.fixture(scope="module")
def smoke_run(tiny_synthetic, tmp_path_factory, single_thread):
    """A smoke run trained for one epoch on the tiny synthetic dataset (its checkpoint and meta-test pairs)."""
    run = tmp_path_factory.mktemp("bench") / "run"
    train(make_config("smoke", data_root=str(tiny_synthetic.root), epochs=1, val_pairs_per_class=0), run,
          progress=False)
    return run


def test_fast_path_check_on_random_weights_is_uninformative():
    model = tiny(foreground_screening=False)  # the fine head alone: its random cosines tie on nearly every pixel
    episodes = [band_episode(1, 64, 3, seed=s) for s in range(2)]
    trivial = fast_path_check(model, episodes, "cpu", amp=False, channels_last=False)
    assert trivial["applies"] is False and trivial["passed"] is True
    # random weights: every cosine is close to 1, so nearly every pixel is a tie and the check cannot judge
    check = fast_path_check(model, episodes, "cpu", amp=False, channels_last=True)
    assert check["applies"] is True and check["pixels"] == 2 * 64 * 64
    assert check["informative"] is False and check["passed"] is None and "--check-run" in check["reason"]
    assert next(model.parameters()).is_contiguous()  # the model is given back in its own memory format


def test_fast_path_check_on_a_trained_run(smoke_run):
    cfg, model, episodes = check_run_episodes(smoke_run, 4, "cpu")
    assert cfg.profile == "smoke" and len(episodes) >= 1 and not model.training
    assert {"query_image", "support_image", "support_label", "query_label"} <= set(episodes[0])
    # channels-last on the CPU: another memory layout, the same maths up to rounding
    check = fast_path_check(model, episodes, "cpu", amp=False, channels_last=True)
    assert check["applies"] and check["episodes"] == len(episodes) and 0 <= check["decided_fraction"] <= 1
    assert check["pixel_agreement"] > 0.99 and check["miou_diff_points"] < 1.0
    assert check["passed"] is (True if check["informative"] else None)
    # the benchmark takes the run for its check (on the CPU there is no fast path to compare, so it does not apply)
    result = run_benchmark(profile="smoke", batch_sizes=(1,), iters=1, warmup=0, train_steps=1, peak_matmul_n=128,
                           check_run=str(smoke_run / CHECKPOINT), fast_check_episodes=2)
    assert result["fast_path_check"]["eopnet"]["source"].startswith("run ")
    assert result["fast_path_check"]["eopnet"]["applies"] is False


# ---------------------------------------------------------------------------------------------------- cached support
def _assert_same(ref: dict, got: dict, exact: bool) -> None:
    """exact: bit for bit. Otherwise logits equal up to float rounding (~1e-6), and labels equal at every pixel whose
    two best logits are more than 1e-4 apart (random weights on noise images leave many near-ties)."""
    assert ref.keys() == got.keys() and ref["classes"] == got["classes"] and ref["beta"] == got["beta"]
    for key, value in ref.items():
        if isinstance(value, torch.Tensor):
            if exact:
                assert torch.equal(value, got[key]), key
            else:
                assert torch.allclose(value, got[key], atol=1e-4, rtol=1e-5), key
    same = ref["pred"].argmax(1) == got["pred"].argmax(1)
    top2 = ref["pred"].topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > (0.0 if exact else 1e-4)  # pixels that are no near-tie
    assert bool(same[decided].all()) and (not exact or bool(same.all()))


CONFIGS = {
    "paper": EOPNetConfig(backbone=TINY, embed_dim=32),
    "release": EOPNetConfig.release_compat(backbone=TINY, embed_dim=32),  # screening + AGM at eval
    "nearest": EOPNetConfig(backbone=TINY, embed_dim=32, mask_downsample="nearest", test_prototypes="static"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_support_equals_plain_forward(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = EOPNet(cfg)
    batch = band_episode(2, 64, 3, seed=1)
    support, support_label, human = batch["support_image"], batch["support_label"], batch["support_human"]
    support_label[1][support_label[1] == support_label[1].max()] = 0  # the two supports hold different classes
    model.train()  # initialise, then update the prototype memory: eval uses dynamic prototypes for these classes
    epoch = cfg.warmup_epochs + 1
    for _ in range(2):
        model(batch["query_image"], support, support_label, query_label=batch["query_label"], epoch=epoch,
              max_epoch=epoch + 1)
    assert int(model.fine_memory.num_updates.sum()) > 0
    model.eval()
    cache = model.encode_support(support, support_label, support_human=human)
    assert isinstance(cache, SupportCache) and cache.batch == 2 and cache.classes[0] != cache.classes[1]
    with torch.no_grad():
        # other query size: forward runs query and support through the backbone apart, as the cache does: identical
        query = torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(5))
        _assert_same(model(query, support, support_label, support_human=human),
                     model.forward_with_support(query, cache), exact=True)
        # same size: forward batches query and support in one backbone pass (equal up to float rounding)
        _assert_same(model(batch["query_image"], support, support_label, support_human=human),
                     model.forward_with_support(batch["query_image"], cache), exact=False)
        # one support shared by a batch of queries
        one = model.encode_support(support[:1], support_label[:1], support_human=human[:1])
        queries = torch.cat([query, query[:1]])
        _assert_same(model(queries, support[:1].expand(3, -1, -1, -1), support_label[:1].expand(3, -1, -1),
                           support_human=human[:1].expand(3, -1, -1)),
                     model.forward_with_support(queries, one), exact=False)


def test_cached_support_errors():
    model = tiny()
    batch = band_episode(2, 64, 2)
    cache = model.encode_support(batch["support_image"], batch["support_label"])
    with pytest.raises(ValueError, match="holds 2 supports but the query batch is 3"):
        model.forward_with_support(torch.rand(3, 3, 64, 64), cache)
    with pytest.raises(ValueError, match="channels"):
        model.forward_with_support(torch.rand(2, 1, 64, 64), cache)
    with pytest.raises(ValueError, match="no foreground pixels"):
        model.encode_support(batch["support_image"], torch.zeros(2, 64, 64, dtype=torch.long))
    model.train()
    with pytest.raises(RuntimeError, match="model.eval"):
        model.encode_support(batch["support_image"], batch["support_label"])
    with pytest.raises(RuntimeError, match="model.eval"):
        model.forward_with_support(batch["query_image"], cache)


# ---------------------------------------------------------------------------------------------------- parse a folder
def test_parse_folder_writes_one_overlay_per_query(tiny_synthetic, smoke_run, tmp_path, capsys):
    run = smoke_run
    ids = tiny_synthetic.ids("test")
    queries = tmp_path / "queries"
    queries.mkdir()
    for i in (0, 1, 2):
        shutil.copy(tiny_synthetic.image_path(ids[i]), queries / f"q{i}{tiny_synthetic.image_path(ids[i]).suffix}")
    (queries / "notes.txt").write_text("not an image")
    support, mask = tiny_synthetic.image_path(ids[15]), tiny_synthetic.label_path(ids[15])
    args = ["parse", "--checkpoint", str(run / CHECKPOINT), "--support", str(support), "--support-mask", str(mask)]
    out = tmp_path / "parsed"
    assert main(args + ["--query", str(queries), "--out", str(out), "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 3 and result["support_cached"] is True
    assert sorted(p.name for p in out.iterdir()) == ["q0.png", "q0_labels.png", "q1.png", "q1_labels.png",
                                                     "q2.png", "q2_labels.png"]
    # the cached support gives the single-file labels
    single = tmp_path / "single.png"
    assert main(args + ["--query", str(queries / f"q0{tiny_synthetic.image_path(ids[0]).suffix}"),
                        "--out", str(single), "--quiet"]) == 0
    capsys.readouterr()
    a = np.array(Image.open(out / "q0_labels.png"))
    b = np.array(Image.open(tmp_path / "single_labels.png"))
    assert a.shape == b.shape == (64, 64) and (a == b).mean() > 0.999
    # clear errors: outputs into the query folder, an empty folder, an image name as the output folder
    assert main(args + ["--query", str(queries), "--out", str(queries), "--quiet"]) == 2
    assert "another folder than --query" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(args + ["--query", str(empty), "--out", str(out), "--quiet"]) == 2
    assert "holds no .jpg/.jpeg/.png images" in capsys.readouterr().err
    assert main(args + ["--query", str(queries), "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
    assert "--out must be a folder too" in capsys.readouterr().err
