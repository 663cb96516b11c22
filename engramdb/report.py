"""A self-contained HTML report of one store, with pictures drawn as inline SVG.

The report is one file with no scripts and no network references, so it opens anywhere
(an air-gapped laptop, a CI artifact viewer). Every picture is computed here from read-only
catalog queries; building a report never changes the store (it deliberately does not run
recalls, which earn lifespan, and instead pictures the ``recalls`` counter).

Pictures, each an ``<svg>`` with an ``id`` and a ``<title>``:

- ``kinds-over-time``: engrams mentioned per stretch of the clock, stacked by kind
- ``lifespan-left``: a histogram of ticks left before each live engram dies
- ``link-graph``: the strongest Hebbian links, laid out by a small force simulation
- ``recall-counts``: how many engrams were recalled 0, 1, 2-3, 4-7, ... times
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from engramdb.content import decompress_text
from engramdb.storage.fsio import atomic_write_bytes
from engramdb.types import KIND_NAMES
from engramdb.version import __version__

PICTURES = ("kinds-over-time", "lifespan-left", "link-graph", "recall-counts")
KIND_COLOURS = {"working": "#e4a11b", "short_term": "#3b82c4", "long_term": "#2e9e6a"}
W, H = 640, 260  # picture size in px
PAD = 40  # room for axis labels
MAX_LINKS = 40  # strongest links drawn


def write_report(store: Any, out: str | os.PathLike[str]) -> Path:
    """Write the report of ``store`` to ``out`` (atomically) and return its path.

    >>> write_report(mem, "report.html")  # doctest: +SKIP
    PosixPath('report.html')
    """
    out = Path(out)
    atomic_write_bytes(out, render(collect(store)).encode("utf-8"), durable=False)
    return out


def collect(store: Any) -> dict[str, Any]:
    """Gather everything the report shows with read-only queries, as one snapshot: writers
    (gc's catalog rewrite among them) wait until it is gathered."""
    with store.snapshot() as snap:
        return _collect_locked(store, snap)


def _collect_locked(store: Any, snap: Any) -> dict[str, Any]:
    q = snap.query
    now = store.clock
    stats = store.stats()
    mentions = q(
        "SELECT o.tick, e.kind, count(DISTINCT o.eid) FROM occurrences o "
        "JOIN engrams e ON e.eid = o.eid GROUP BY ALL ORDER BY 1"
    )
    lifespans = [float(e) - now for (e,) in q(
        "SELECT expires_at FROM engrams WHERE expires_at > ?", [now])]
    pinned = q("SELECT count(*) FROM engrams WHERE expires_at IS NULL")[0][0]
    recalls = q("SELECT recalls, count(*) FROM engrams "
                "WHERE expires_at IS NULL OR expires_at > ? GROUP BY 1", [now])
    links = _links(store)
    texts = {}
    ids = sorted({i for a, b, _ in links for i in (a, b)})
    if ids:
        for ident, blob in q("SELECT id, text FROM engrams WHERE id IN "
                             "(SELECT unnest(?::VARCHAR[]))", [ids]):
            texts[ident] = decompress_text(blob)

    return {
        "stats": stats, "clock": now, "version": __version__,
        "mentions": [(int(t), KIND_NAMES.get(int(k), str(k)), int(n)) for t, k, n in mentions],
        "lifespans": lifespans, "pinned": int(pinned),
        "recalls": {int(r): int(n) for r, n in recalls},
        "links": links, "texts": texts,
    }


def _links(store: Any) -> list[tuple[str, str, float]]:
    """The strongest links now."""
    return [(str(a), str(b), float(w)) for a, b, w in store.links(MAX_LINKS)]


# -- rendering ----------------------------------------------------------------------------------


def render(data: dict[str, Any]) -> str:
    """The report as one HTML document (no scripts, no external resources)."""
    s = data["stats"]
    rows = [("path", s.get("path")), ("engramdb", data["version"]), ("clock", data["clock"]),
            ("live engrams", s.get("count")), ("dim / dtype", f"{s.get('dim')} / {s.get('dtype')}"),
            ("encoder", s.get("encoder")), ("disk bytes", s.get("bytes"))]
    rows += [(f"kind {k}", v) for k, v in (s.get("kinds") or {}).items()]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    figures = [
        ("kinds-over-time", "Engrams by kind over the clock", _kinds_svg(data)),
        ("lifespan-left", "Lifespan left (ticks)", _lifespan_svg(data)),
        ("link-graph", f"Strongest links (top {MAX_LINKS})", _graph_svg(data)),
        ("recall-counts", "How often engrams were recalled", _recalls_svg(data)),
    ]
    body = "\n".join(f"<section><h2>{_e(t)}</h2>\n{svg}\n</section>" for _, t, svg in figures)
    legend = " ".join(
        f'<span class="key" style="background:{c}"></span>{_e(k)}'
        for k, c in KIND_COLOURS.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>engramdb report: {_e(s.get('path'))}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 2px 12px 2px 0; }}
svg {{ background: #fafafa; border: 1px solid #ddd; }} text {{ font-size: 11px; fill: #333; }}
.key {{ display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }}
</style></head>
<body>
<h1>engramdb report</h1>
<table>{table}</table>
<p>Kinds: {legend}</p>
{body}
</body></html>
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _svg(pid: str, title: str, parts: list[str]) -> str:
    inner = "\n".join(parts)
    return (f'<svg id="{pid}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" role="img"><title>{_e(title)}</title>\n{inner}\n</svg>')


def _axes(ymax: float, xlabels: tuple[str, str], ylabel: str) -> list[str]:
    x0, y0, x1, y1 = PAD, H - PAD, W - 10, 10
    return [
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#555"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#555"/>',
        f'<text x="{x0 - 4}" y="{y1 + 8}" text-anchor="end">{_e(_num(ymax))}</text>',
        f'<text x="{x0 - 4}" y="{y0}" text-anchor="end">0</text>',
        f'<text x="{x0}" y="{y0 + 14}">{_e(xlabels[0])}</text>',
        f'<text x="{x1}" y="{y0 + 14}" text-anchor="end">{_e(xlabels[1])}</text>',
        f'<text x="{(x0 + x1) // 2}" y="{H - 6}" text-anchor="middle">{_e(ylabel)}</text>',
    ]


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e6 else f"{x:.2e}"


def _empty(pid: str, title: str, why: str) -> str:
    return _svg(pid, title, [
        f'<rect x="1" y="1" width="{W - 2}" height="{H - 2}" fill="none" stroke="#ccc"/>',
        f'<text x="{W // 2}" y="{H // 2}" text-anchor="middle">{_e(why)}</text>'])


def _bars(values: list[float], heights_max: float, x: float, width: float) -> list[tuple]:
    """(x, y, w, h) of bars scaled into the plot area."""
    inner_h = H - PAD - 10
    return [(x + i * width, H - PAD - v / heights_max * inner_h, max(width - 1, 1),
             v / heights_max * inner_h) for i, v in enumerate(values)]


def _kinds_svg(data: dict[str, Any]) -> str:
    pid, title = "kinds-over-time", "Engrams mentioned per stretch of the clock, by kind"
    mentions = data["mentions"]
    if not mentions:
        return _empty(pid, title, "no engrams yet")
    t0 = min(t for t, _, _ in mentions)
    t1 = max(data["clock"], max(t for t, _, _ in mentions))
    nbins = min(40, t1 - t0 + 1)
    width = (t1 - t0 + 1) / nbins
    counts = {k: np.zeros(nbins) for k in KIND_COLOURS}
    for t, kind, n in mentions:
        counts.setdefault(kind, np.zeros(nbins))[min(nbins - 1, int((t - t0) / width))] += n
    total = sum(counts.values())
    ymax = float(total.max()) or 1.0
    bar_w = (W - PAD - 10) / nbins
    parts = _axes(ymax, (f"tick {t0}", f"tick {t1}"), "clock (ticks)")
    base = np.zeros(nbins)
    for kind, vals in counts.items():
        colour = KIND_COLOURS.get(kind, "#999")
        for i, (x, _, w, h) in enumerate(_bars(list(vals), ymax, PAD, bar_w)):
            if vals[i] == 0:
                continue
            y = H - PAD - (base[i] + vals[i]) / ymax * (H - PAD - 10)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{_e(kind)}: {int(vals[i])}</title></rect>')
        base += vals
    return _svg(pid, title, parts)


def _lifespan_svg(data: dict[str, Any]) -> str:
    pid, title = "lifespan-left", "Histogram of lifespan left of live engrams (ticks)"
    left, pinned = data["lifespans"], data["pinned"]
    if not left and not pinned:
        return _empty(pid, title, "no live engrams")
    nbins = 20
    hi = max(left) if left else 1.0
    hist = np.histogram(left, bins=nbins, range=(0, hi))[0] if left else np.zeros(nbins)
    values = [*hist.tolist(), pinned]  # the last bar: pinned, never expire
    ymax = float(max(values)) or 1.0
    bar_w = (W - PAD - 10) / len(values)
    parts = _axes(ymax, ("0", f"{_num(hi)} | never"), "ticks left")
    for i, (x, y, w, h) in enumerate(_bars(values, ymax, PAD, bar_w)):
        never = i == len(values) - 1
        label = "pinned (never)" if never else (
            f"{_num(i * hi / nbins)}-{_num((i + 1) * hi / nbins)}")
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                     f'fill="{"#888" if never else "#3b82c4"}">'
                     f"<title>{_e(label)}: {int(values[i])}</title></rect>")
    return _svg(pid, title, parts)


def _recalls_svg(data: dict[str, Any]) -> str:
    pid, title = "recall-counts", "Live engrams by number of times recalled"
    recalls = data["recalls"]
    if not recalls:
        return _empty(pid, title, "no live engrams")
    # Buckets 0, 1, 2-3, 4-7, ...: recall counts are heavy-tailed.
    top = max(recalls)
    nb = 2 + (int(math.log2(top)) if top >= 1 else 0)
    values = [0] * nb
    for r, n in recalls.items():
        values[0 if r == 0 else 1 + int(math.log2(r))] += n
    labels = ["0"] + [f"{2 ** (i - 1)}-{2 ** i - 1}" if i > 1 else "1" for i in range(1, nb)]
    ymax = float(max(values)) or 1.0
    bar_w = (W - PAD - 10) / nb
    parts = _axes(ymax, (labels[0], labels[-1]), "times recalled")
    for i, (x, y, w, h) in enumerate(_bars([float(v) for v in values], ymax, PAD, bar_w)):
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                     f'fill="#2e9e6a"><title>recalled {labels[i]}: {values[i]}</title></rect>')
    return _svg(pid, title, parts)


def layout(n: int, edges: list[tuple[int, int, float]], iterations: int = 150) -> np.ndarray:
    """Node positions in [0, 1]^2: a circle relaxed by a Fruchterman-Reingold simulation.

    Deterministic (no random start), so the same store draws the same picture.
    """
    if n == 0:
        return np.zeros((0, 2))
    angle = 2 * np.pi * np.arange(n) / n
    pos = 0.5 + 0.4 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    if n == 1:
        return np.array([[0.5, 0.5]])
    k = 1.0 / math.sqrt(n)  # ideal edge length
    temp = 0.1
    for _ in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.linalg.norm(delta, axis=2) + 1e-9
        force = (delta / dist[..., None] * (k * k / dist)[..., None]).sum(axis=1)  # repulsion
        for a, b, w in edges:
            d = pos[a] - pos[b]
            dl = float(np.linalg.norm(d)) + 1e-9
            pull = d / dl * (dl * dl / k) * (0.5 + w)
            force[a] -= pull
            force[b] += pull
        length = np.linalg.norm(force, axis=1) + 1e-9
        pos += force / length[:, None] * np.minimum(length, temp)[:, None]
        pos = np.clip(pos, 0.0, 1.0)
        temp *= 0.97
    span = pos.max(axis=0) - pos.min(axis=0)
    return (pos - pos.min(axis=0)) / np.where(span > 0, span, 1.0)


def _graph_svg(data: dict[str, Any]) -> str:
    pid, title = "link-graph", "The strongest links between engrams"
    links = data["links"]
    if not links:
        return _empty(pid, title, "no links yet")
    ids = sorted({i for a, b, _ in links for i in (a, b)})
    node = {ident: i for i, ident in enumerate(ids)}
    wmax = max(w for _, _, w in links) or 1.0
    edges = [(node[a], node[b], w / wmax) for a, b, w in links]
    pos = layout(len(ids), edges)
    xy = np.stack([PAD + pos[:, 0] * (W - PAD - 170), 20 + pos[:, 1] * (H - 40)], axis=1)
    parts = []
    for (_, _, w), (ia, ib, wn) in zip(links, edges):
        parts.append(f'<line x1="{xy[ia, 0]:.1f}" y1="{xy[ia, 1]:.1f}" x2="{xy[ib, 0]:.1f}" '
                     f'y2="{xy[ib, 1]:.1f}" stroke="#3b82c4" stroke-opacity="0.7" '
                     f'stroke-width="{0.5 + 3.5 * wn:.2f}"><title>weight {w:.3g}</title></line>')
    texts = data["texts"]
    for ident, i in node.items():
        label = " ".join(texts.get(ident, ident).split())
        parts.append(f'<circle cx="{xy[i, 0]:.1f}" cy="{xy[i, 1]:.1f}" r="5" fill="#2e9e6a">'
                     f"<title>{_e(ident[:12])}: {_e(label[:200])}</title></circle>")
        if len(node) <= 16:  # labels stay legible only on small graphs
            parts.append(f'<text x="{xy[i, 0] + 7:.1f}" y="{xy[i, 1] + 4:.1f}">'
                         f"{_e(label[:24])}</text>")
    return _svg(pid, title, parts)
