"""The SVG charts: round ticks, data drawn inside the axes where it belongs, text escaped."""

from xml.etree import ElementTree

import pytest

from spamtune.charts import Chart, nice_ticks, render_svg

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (-0.01, 1.01, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (170, 5400, [1000, 2000, 3000, 4000, 5000]),
        (0.083, 0.47, [0.1, 0.2, 0.3, 0.4]),
        (3, 3, [3]),
    ],
)
def test_ticks_are_round_numbers_within_the_range(low, high, expected):
    ticks = nice_ticks(low, high)
    assert ticks == pytest.approx(expected)
    assert all(low - 1e-9 <= t <= high + 1e-9 for t in ticks) and len(ticks) <= 8


def parse(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)


def test_points_land_where_the_axes_say():
    chart = Chart("x", "y", x_range=(0, 10), y_range=(0, 1))
    chart.plot([0, 5, 10], [0, 0.5, 1], "line", marker="circle")
    root = parse(render_svg([chart], 500, 420))
    frame = next(e for e in root.iter(SVG + "rect") if e.get("stroke") == "black")
    left, top = float(frame.get("x")), float(frame.get("y"))
    right, bottom = left + float(frame.get("width")), top + float(frame.get("height"))
    points = [tuple(map(float, p.split(","))) for p in next(root.iter(SVG + "polyline")).get("points").split()]
    assert points[0] == pytest.approx((left, bottom), abs=0.1)  # (0, 0): bottom left
    assert points[1] == pytest.approx(((left + right) / 2, (top + bottom) / 2), abs=0.1)
    assert points[2] == pytest.approx((right, top), abs=0.1)  # (10, 1): top right
    markers = [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(SVG + "circle")]
    assert len(markers) == 4  # one per point, then the legend's
    assert all(m == pytest.approx(p, abs=0.1) for m, p in zip(markers, points))


def test_steps_go_across_then_up_and_panels_sit_side_by_side():
    roc = Chart("fpr", "tpr", (0, 1), (0, 1))
    roc.plot([0, 0.5, 1], [0, 1, 1], "ROC", step=True)
    other = Chart("a", "b")
    other.plot([1, 2], [3, 4], "other")
    root = parse(render_svg([roc, other], 400, 400))
    assert root.get("width") == "800"
    first, second = ([tuple(map(float, p.split(","))) for p in e.get("points").split()] for e in root.iter(SVG + "polyline"))
    assert len(first) == 5  # (0,0) (0.5,0) (0.5,1) (1,1) (1,1)
    assert first[1][1] == first[0][1] and first[2][0] == first[1][0]  # across, then up
    assert all(x > 400 for x, _ in second)  # the second panel is drawn in the right half


def test_labels_are_text_not_markup_and_a_top_axis_is_drawn():
    chart = Chart("<b>seen</b> & more", "loss", top_axis=("Epochs", lambda x: x / 100, lambda e: e * 100))
    chart.plot([0, 100, 200], [1.0, 0.5, 0.25], 'val "loss" <script>')
    root = parse(render_svg([chart]))
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "<b>seen</b> & more" in texts and 'val "loss" <script>' in texts and "Epochs" in texts
    assert not list(root.iter(SVG + "b")) and not list(root.iter(SVG + "script"))
    assert {"0", "1", "2"} <= set(texts)  # the epochs along the top
