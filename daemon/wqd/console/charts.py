"""Small inline SVG charts of a series of numbers: no script, no library.

Only numbers and the caller's escaped title go into the markup, so a chart
holds nothing a message could have written.
"""

import html

WIDTH, HEIGHT = 240, 48


def sparkline(values: list, title: str, css_class: str) -> str:
    """A line of ``values`` (oldest first, scaled to their maximum) with the last value and the peak."""
    label = html.escape(title)
    if not values:
        return (f'<svg class="chart {css_class}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
                f'aria-label="{label}: no data yet"><title>{label}: no data yet</title>'
                f'<line x1="0" y1="{HEIGHT - 1}" x2="{WIDTH}" y2="{HEIGHT - 1}" class="axis"/></svg>')
    if len(values) == 1:
        values = values * 2  # one interval so far: a level line
    peak = max(values) or 1.0
    step = WIDTH / max(1, len(values) - 1)
    points = " ".join(f"{index * step:.1f},{HEIGHT - 2 - (value / peak) * (HEIGHT - 6):.1f}"
                      for index, value in enumerate(values))
    summary = f"{label}: {values[-1]:.1f}/min now, peak {max(values):.1f}/min"
    return (f'<svg class="chart {css_class}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{summary}">'
            f'<title>{summary}</title>'
            f'<line x1="0" y1="{HEIGHT - 1}" x2="{WIDTH}" y2="{HEIGHT - 1}" class="axis"/>'
            f'<polyline points="{points}" class="line"/></svg>')
