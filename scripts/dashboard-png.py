#!/usr/bin/env python3
"""A picture of the chart's Grafana dashboard drawn from a real Prometheus: every panel of
dashboard.json laid out by its gridPos, each target's query run through Prometheus's HTTP API
(query_range; a bar gauge's instant query at the end of the range) with the Grafana variables
put in as Grafana would, and the series plotted with their legends. Nothing is drawn that the
server did not answer: a panel whose queries return nothing says so in red.

Usage (scripts/dashboard-png.sh makes the venv with matplotlib and runs this):
  dashboard-png.py --prometheus http://127.0.0.1:9091 --dashboard dashboard.json \
      --out docs/dashboard.png [--start UNIX --end UNIX] [--step 1s] [--rate-interval 5s]

Exit status: 0 when every panel had data, 1 when some had none (the PNG is written either way),
2 on bad arguments or an unreachable server.
"""

import argparse
import datetime
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

GRID_COLUMNS = 24
PALETTE = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9",
           "#705da0", "#508642", "#cca300", "#447ebc", "#c15c17"]


def seconds(text):
    """A Prometheus duration such as 5s, 1m, 1h30m, in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 5s or 1m")
    return sum(int(n) * units[u] for n, u in parts)


def substitute(expr, dashboard, step, rate_interval, range_seconds):
    """The variables Grafana puts into a query: its own interval variables, the data source,
    and each template variable at its "All" value (allValue, or .* for a multi-value one)."""
    fixed = {
        "__rate_interval": rate_interval,
        "__interval": step,
        "__interval_ms": str(int(seconds(step) * 1000)),
        "__range": f"{int(range_seconds)}s",
        "__range_s": str(int(range_seconds)),
    }
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable.get("name")
        if not name or name in fixed:
            continue
        if variable.get("type") == "datasource":
            fixed[name] = "prometheus"
        elif variable.get("includeAll"):
            fixed[name] = variable.get("allValue") or ".*"
    # Longest names first: $__interval must not eat the start of $__interval_ms.
    for name in sorted(fixed, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", fixed[name]).replace("$" + name, fixed[name])
    return expr


def query(url, path, params):
    full = f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:300]
        raise RuntimeError(f"{path}: HTTP {e.code}: {detail}") from e
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body.get('error', body)}")
    return body["data"]["result"]


def legend(template, metric):
    if not template:
        return ", ".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), template)


def draw_timeseries(ax, panel, series):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    stacked = defaults.get("custom", {}).get("stacking", {}).get("mode", "none") != "none"
    if stacked and series:
        # Every series on the union of timestamps (absent points count as 0), stacked.
        stamps = sorted({t for _, points in series for t, _ in points})
        values = []
        for _, points in series:
            by_time = dict(points)
            values.append([by_time.get(t, 0.0) for t in stamps])
        times = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc) for t in stamps]
        ax.stackplot(times, values, labels=[name for name, _ in series],
                     colors=PALETTE[: len(series)] * (len(series) // len(PALETTE) + 1), alpha=0.8)
    else:
        for index, (name, points) in enumerate(series):
            times = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc) for t, _ in points]
            ax.plot(times, [v for _, v in points], label=name, linewidth=1.8,
                    color=PALETTE[index % len(PALETTE)])
    unit = defaults.get("unit")
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"] * (1.05 if unit == "percentunit" else 1))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=datetime.timezone.utc))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)
    if series:
        ax.legend(fontsize=6.5, loc="upper left", framealpha=0.85,
                  ncol=2 if len(series) > 4 else 1)


def draw_bars(ax, panel, series):
    """A bar gauge: one horizontal bar per series, its last value."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    names = [name for name, _ in series]
    values = [points[-1][1] for _, points in series]
    steps = defaults.get("thresholds", {}).get("steps", [])

    def colour(value):
        chosen = "#7eb26d"
        for step in steps:
            if step.get("value") is None or value >= step["value"]:
                chosen = {"red": "#e24d42", "orange": "#ef843c", "green": "#7eb26d"}.get(
                    step.get("color"), step.get("color", chosen))
        return chosen

    positions = list(range(len(values)))
    ax.barh(positions, values, color=[colour(v) for v in values])
    ax.set_yticks(positions, names, fontsize=7)
    ax.invert_yaxis()
    decimals = defaults.get("decimals", 1)
    for position, value in zip(positions, values):
        ax.text(value, position, f" {value:.{decimals}f}", va="center", fontsize=8)
    low, high = defaults.get("min"), defaults.get("max")
    if low is not None and high is not None:
        ax.set_xlim(min(low, min(values, default=0)), max(high, max(values, default=0) * 1.15))
    ax.axvline(0, color="#888888", linewidth=0.8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.25)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="base URL, http://HOST:PORT")
    parser.add_argument("--dashboard", required=True, help="the Grafana dashboard JSON")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--start", type=float, help="Unix seconds (default: end - 10 minutes)")
    parser.add_argument("--end", type=float, help="Unix seconds (default: now)")
    parser.add_argument("--step", default="1s", help="query_range step, also $__interval")
    parser.add_argument("--rate-interval", default="5s", help="what $__rate_interval becomes")
    parser.add_argument("--subtitle", default="", help="a line under the title")
    args = parser.parse_args()
    seconds(args.step)
    seconds(args.rate_interval)

    with open(args.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)
    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - 600
    if start >= end:
        parser.error("--start must be before --end")

    panels = [p for p in dashboard.get("panels", []) if p.get("type") != "row"]
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=1)
    # Laid out in inches as Grafana lays out its grid: 24 columns, rows of a fixed height, each
    # panel a framed cell with its title on top and room for its tick labels.
    width, unit, header, margin = 16.0, 0.42, 0.95, 0.15
    height = header + rows * unit + margin
    figure = plt.figure(figsize=(width, height), dpi=110)
    column = (width - 2 * margin) / GRID_COLUMNS
    empty = []
    for panel in panels:
        g = panel["gridPos"]
        left, top = margin + g["x"] * column, header + g["y"] * unit
        cell_width, cell_height = g["w"] * column, g["h"] * unit
        figure.patches.append(Rectangle(
            ((left + 0.04) / width, 1 - (top + cell_height - 0.04) / height),
            (cell_width - 0.08) / width, (cell_height - 0.08) / height,
            transform=figure.transFigure, fill=False, edgecolor="#cccccc", linewidth=0.8))
        pad_left = 2.1 if panel.get("type") in ("bargauge", "stat", "gauge") else 0.6
        pad_top, pad_bottom, pad_right = 0.42, 0.38, 0.2
        ax = figure.add_axes((
            (left + pad_left) / width,
            1 - (top + cell_height - pad_bottom) / height,
            (cell_width - pad_left - pad_right) / width,
            (cell_height - pad_top - pad_bottom) / height,
        ))
        figure.text((left + 0.15) / width, 1 - (top + 0.12) / height, panel.get("title", ""),
                    fontsize=10, fontweight="bold", va="top")
        series = []
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], dashboard, args.step, args.rate_interval, end - start)
            try:
                if target.get("instant"):
                    result = query(args.prometheus, "/api/v1/query", {"query": expr, "time": end})
                    found = [(r["metric"], [(float(r["value"][0]), float(r["value"][1]))])
                             for r in result]
                else:
                    result = query(args.prometheus, "/api/v1/query_range",
                                   {"query": expr, "start": start, "end": end, "step": args.step})
                    found = [(r["metric"], [(float(t), float(v)) for t, v in r["values"]])
                             for r in result]
            except (urllib.error.URLError, RuntimeError) as e:
                print(f"{panel.get('title')}: {target.get('refId')}: {e}", file=sys.stderr)
                if isinstance(e, urllib.error.URLError):
                    return 2
                found = []
            for metric, points in found:
                if points:
                    series.append((legend(target.get("legendFormat"), metric), points))
        if not series:
            empty.append(panel.get("title", f"panel {panel.get('id')}"))
            ax.text(0.5, 0.5, "no data", color="#e24d42", ha="center", va="center",
                    transform=ax.transAxes, fontsize=12)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        series.sort(key=lambda s: s[0])
        if panel.get("type") in ("bargauge", "stat", "gauge"):
            draw_bars(ax, panel, series)
        else:
            draw_timeseries(ax, panel, series)

    when = datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
    title = dashboard.get("title", "Grafana dashboard")
    figure.text(margin / width, 1 - 0.15 / height, title, fontsize=16, fontweight="bold",
                va="top")
    under = (f"{when:%Y-%m-%d %H:%M:%S} UTC + {end - start:.0f} s, step {args.step}, "
             f"$__rate_interval {args.rate_interval}, from {args.prometheus}")
    if args.subtitle:
        under = f"{args.subtitle} — {under}"
    figure.text(margin / width, 1 - 0.6 / height, under, fontsize=8.5, color="#555555",
                va="top")
    figure.savefig(args.out)
    print(f"wrote {args.out}: {len(panels)} panels, {len(empty)} without data")
    if empty:
        print("no data: " + "; ".join(empty), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
