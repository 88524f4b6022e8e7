"""Tiny server-drawn SVG charts for the regulator's desk: a bar chart and a line chart of one series over labelled
periods (months). The output is plain ``<svg>`` markup the page embeds as is: no script, no ``style`` attribute, no
event handler, nothing the pages' Content-Security-Policy (``style-src 'self'``, ``script-src 'self'``) would block.
Colours come from presentation attributes (``fill``, ``stroke``) and classes styled by app.css.

Every text (labels, the title) is escaped; values are integers (fen or counts) and are drawn to scale from zero, so a
chart never exaggerates a change by cutting the axis.
"""

from collections.abc import Callable, Sequence
from html import escape

WIDTH = 640
HEIGHT = 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 10, 24, 36


def _fmt_count(value: int) -> str:
    return f"{value:,}"


def _frame(title: str, kind: str, body: list[str], top: int, fmt: Callable[[int], str]) -> str:
    plot_bottom = HEIGHT - _BOTTOM
    return "".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" viewBox="0 0 {WIDTH} {HEIGHT}"'
            f' width="100%" role="img" aria-label="{escape(title)}">',
            f"<title>{escape(title)}</title>",
            f'<line class="axis" x1="{_LEFT}" y1="{plot_bottom}" x2="{WIDTH - _RIGHT}" y2="{plot_bottom}"'
            ' stroke="#9aa3b5" stroke-width="1"/>',
            f'<text class="tick" x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end" font-size="11" fill="#6b7385">'
            f"{escape(fmt(top))}</text>",
            f'<text class="tick" x="{_LEFT - 6}" y="{plot_bottom + 4}" text-anchor="end" font-size="11"'
            f' fill="#6b7385">{escape(fmt(0))}</text>',
            *body,
            "</svg>",
        ]
    )


def _checked(labels: Sequence[str], values: Sequence[int]) -> list[int]:
    if len(labels) != len(values):
        raise ValueError("one label per value")
    return [int(v) for v in values]


def _scale(values: list[int]) -> tuple[int, Callable[[int], float]]:
    top = max([*values, 0]) or 1
    low = min([*values, 0])
    span = top - low
    height = HEIGHT - _BOTTOM - _TOP

    def y(value: int) -> float:
        return round(_TOP + (top - value) * height / span, 1)

    return top, y


def _label(x: float, text: str) -> str:
    return (
        f'<text class="label" x="{x}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle" font-size="11"'
        f' fill="#4a5163">{escape(text)}</text>'
    )


def bar_chart(
    title: str, labels: Sequence[str], values: Sequence[int], *, fmt: Callable[[int], str] = _fmt_count
) -> str:
    """One bar per label, drawn from zero (negative values below the axis); each bar carries its value as a
    ``<title>`` tooltip and a ``data-value`` attribute."""
    numbers = _checked(labels, values)
    top, y = _scale(numbers)
    step = (WIDTH - _LEFT - _RIGHT) / max(len(numbers), 1)
    body = []
    for i, (label, value) in enumerate(zip(labels, numbers, strict=True)):
        x = round(_LEFT + i * step + step * 0.15, 1)
        y0, y1 = y(0), y(value)
        body.append(
            f'<rect class="bar" x="{x}" y="{min(y0, y1)}" width="{round(step * 0.7, 1)}"'
            f' height="{round(abs(y0 - y1), 1)}" fill="#0b5cad" data-value="{value}">'
            f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>"
        )
        body.append(_label(round(_LEFT + i * step + step / 2, 1), label))
    return _frame(title, "bar", body, top, fmt)


def line_chart(
    title: str, labels: Sequence[str], values: Sequence[int], *, fmt: Callable[[int], str] = _fmt_count
) -> str:
    """A polyline through the values, with a dot (and its value as a tooltip) at each label."""
    numbers = _checked(labels, values)
    top, y = _scale(numbers)
    step = (WIDTH - _LEFT - _RIGHT) / max(len(numbers), 1)
    points = [(round(_LEFT + i * step + step / 2, 1), y(v)) for i, v in enumerate(numbers)]
    body = []
    if points:
        path = " ".join(f"{px},{py}" for px, py in points)
        body.append(f'<polyline class="line" points="{path}" fill="none" stroke="#137333" stroke-width="2"/>')
    for (px, py), label, value in zip(points, labels, numbers, strict=True):
        body.append(
            f'<circle class="dot" cx="{px}" cy="{py}" r="3" fill="#137333" data-value="{value}">'
            f"<title>{escape(label)}: {escape(fmt(value))}</title></circle>"
        )
        body.append(_label(px, label))
    return _frame(title, "line", body, top, fmt)
