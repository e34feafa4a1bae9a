"""Palette, colouring and the sample figure."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from oshp.data.synth.generate import generate_synthetic
from oshp.data.vocab import ATR, CIHP, LIP
from oshp.report.plotting import legend_handles, show_samples
from oshp.data.palette import colorize, label_palette, overlay


@pytest.mark.parametrize("spec", [ATR, LIP, CIHP], ids=lambda s: s.key)
def test_palette_is_fixed_distinct_and_twins_share_colours(spec):
    palette = label_palette(spec)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert (palette[0] == 0).all() and (palette[255] == 255).all()
    np.testing.assert_array_equal(palette, label_palette(spec))
    for left, right in spec.lr_pairs:
        np.testing.assert_array_equal(palette[left], palette[right])
    twins = {right for _, right in spec.lr_pairs}
    colours = [tuple(palette[c]) for c in range(spec.num_raw_classes) if c not in twins]
    assert len(set(colours)) == len(colours)


def test_colorize_overlay_and_legend():
    label = np.array([[0, 12], [13, 255]], np.uint8)
    colours = colorize(label, ATR)
    assert colours.shape == (2, 2, 3)
    np.testing.assert_array_equal(colours[0, 1], colours[1, 0])
    image = np.full((2, 2, 3), 100, np.uint8)
    tinted = overlay(image, label, ATR, alpha=0.5)
    np.testing.assert_array_equal(tinted[0, 0], image[0, 0])  # background untouched
    assert not np.array_equal(tinted[0, 1], image[0, 1])
    names = [h.get_label() for h in legend_handles(ATR, [12, 13, 14, 9])]
    assert names == ["legs", "arms", "shoes"]
    assert [h.get_label() for h in legend_handles(ATR, [12, 13], merged=False)] == ["left-leg", "right-leg"]


def test_show_samples_writes_a_png(tmp_path):
    ds = generate_synthetic(tmp_path / "data", train=3, test=1, size=48, workers=1, progress=False)
    path = show_samples(ds, count=3, out=tmp_path / "fig" / "samples.png", columns=2)
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 300
