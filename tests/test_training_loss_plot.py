"""The loss-curve SVG: valid XML, one line per term and series, points placed where the values say."""

import math
import xml.etree.ElementTree as ET

import pytest

from inclust_plus.training.fitting.loss_plot import PANEL_H, PANEL_W, TITLE_H, loss_curves, loss_curves_svg, nice_ticks

NS = {"s": "http://www.w3.org/2000/svg"}


def _points(el) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in el.get("points").split()]


def test_nice_ticks_are_round_and_inside_the_range():
    assert nice_ticks(0.0, 10.0) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert nice_ticks(5.83, 82.4) == [20.0, 40.0, 60.0, 80.0]
    assert nice_ticks(1, 50, 5) == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert nice_ticks(-0.3, 0.3) == [-0.2, 0.0, 0.2]  # steps of 0.1 would be 7 ticks
    assert nice_ticks(3.0, 3.0) == [3.0]


def test_one_panel_per_nonzero_term_with_the_values_in_order(tmp_path):
    history = {"total": [10.0, 6.0, 4.0, 3.0], "reconstruction": [8.0, 5.0, 3.5, 2.5], "kl": [2.0, 1.0, 0.5, 0.5],
               "label": [0.0] * 4, "categorical": [0.0] * 4, "validation": [11.0, 7.0, 5.0, 4.5]}
    path = loss_curves(history, tmp_path / "m.loss.svg", title="run (supervised)")
    root = ET.parse(path).getroot()
    assert root.get("width") == str(3 * PANEL_W) and root.get("height") == str(PANEL_H + TITLE_H)
    texts = [t.text for t in root.iterfind("s:text", NS)]
    assert texts[0] == "run (supervised)" and {"total", "reconstruction", "kl"} <= set(texts) and "label" not in texts
    training = root.findall("s:polyline[@class='training']", NS)
    validation = root.findall("s:polyline[@class='validation']", NS)
    assert len(training) == 3 and len(validation) == 1
    pts = _points(training[0])
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    assert len(pts) == 4 and xs == sorted(xs) and ys == sorted(ys)  # a falling loss: y grows downwards in SVG
    assert xs[1] - xs[0] == pytest.approx(xs[3] - xs[2])  # epochs evenly spaced
    # values map linearly: 10 -> 6 -> 4 -> 3 keeps its ratios of differences
    assert (ys[1] - ys[0]) / (ys[3] - ys[2]) == pytest.approx(4.0, rel=1e-3)
    val = _points(validation[0])
    assert [x for x, _ in val] == xs and all(vy < ty for (_, vy), (_, ty) in zip(val, pts))  # above: a higher loss


def test_a_non_finite_epoch_breaks_the_line_and_one_epoch_is_a_dot():
    svg = loss_curves_svg({"total": [5.0, 4.0, math.nan, 3.0, 2.5]})
    runs = ET.fromstring(svg).findall("s:polyline", NS)
    assert [len(_points(r)) for r in runs] == [2, 2]
    one = ET.fromstring(loss_curves_svg({"total": [7.0]}))
    assert one.findall("s:polyline", NS) == [] and len(one.findall("s:circle", NS)) == 1


def test_a_title_with_markup_characters_stays_valid_xml():
    root = ET.fromstring(loss_curves_svg({"total": [2.0, 1.0]}, title="a<b & c"))
    assert root.find("s:text", NS).text == "a<b & c"
