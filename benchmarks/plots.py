"""Figures for docs/performance.md, drawn from the benchmarks' JSON results.

    python benchmarks/plots.py                 # every benchmarks/results/*.json
    python benchmarks/plots.py chain framing   # only these benchmarks

For each results file NAME.json this draws

- docs/img/NAME-ratios.png: one bar per row that has a ratio (the measured
  value divided by its limit from the same run), the row's target drawn as a
  line across its bar, and the figures behind the ratio written beside it;
- docs/img/NAME-SERIES.png: a line plot for every entry of "series".

Every benchmark writes its file with `write_results` below (or by hand, in
the same schema):

    {"benchmark": NAME, "run": {"date": ISO, "commit": SHORT, "load": [1m, 5m, 15m], "cpus": N},
     "rows": [{"label": TEXT, "value": NUMBER, "unit": TEXT, "limit": NUMBER|null, "limit_label": TEXT|null,
               "ratio": NUMBER|null, "target": TEXT|null, "pass": BOOL|null}],
     "series": {SERIES: {"x_label": TEXT, "y_label": TEXT, "points": [[x, y], ...]}}}

A row's target is a bound on its ratio, written "≥ 0.8×" or "≤ 1.5×" (">=",
"<=", "at least", "at most" and "within" work too); any other text is shown
but draws no line. A series may also carry "title", and "limit" with
"limit_label" for a horizontal line of the limit or target.

matplotlib is optional (`pip install -e '.[plots]'`): without it this script
prints how to install it and exits with status 2; the benchmarks still run.
Only writing the figures needs it, never writing the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
IMAGE_DIR = ROOT / "docs" / "img"
INSTALL_HINT = "plots need matplotlib: pip install -e '.[plots]'"
DPI = 110  # sharp enough on a screen, small enough for the repository (~60 KB per figure)
CLIP_FACTOR = 3.0  # the ratio axis ends at 3x the largest target (or 1x): a 143x bar must not flatten the rest
LABEL_WIDTH = 48  # characters per line of a bar's label
NOTE_WIDTH = 46  # characters per line of the text beside a bar
ANNOTATED_POINTS = 8  # a series with more points gets its values written at the ends and the peak only
LABEL_SPAN = 0.09  # about how much of the ratio axis a label such as "0.85×" covers

# Colours that stay apart for colour-blind readers (Okabe-Ito).
PASS_COLOUR, MISS_COLOUR, PLAIN_COLOUR = "#009E73", "#D55E00", "#8C9DB5"
LINE_COLOUR, LIMIT_COLOUR = "#0072B2", "#D55E00"


class ResultsError(ValueError):
    """A results file that does not follow the schema; the message names the file and the field."""


# -- the results: what a benchmark writes ---------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on a ratio, parsed from text such as "≥ 0.8×"."""

    at_least: bool  # True: ratio >= bound passes; False: ratio <= bound passes
    bound: float

    PATTERN = re.compile(r"^\s*(≥|>=|at least|≤|<=|at most|within)\s*([0-9]*\.?[0-9]+)\s*[×x]?\s*$", re.I)

    @classmethod
    def parse(cls, text: str | None) -> "Target | None":
        match = cls.PATTERN.match(text or "")
        if not match:
            return None
        return cls(match.group(1).lower() in ("≥", ">=", "at least"), float(match.group(2)))

    def met_by(self, ratio: float) -> bool:
        return ratio >= self.bound if self.at_least else ratio <= self.bound


@dataclass(frozen=True)
class Row:
    """One measured figure, and (when it has one) the limit it is measured against."""

    label: str
    value: float
    unit: str
    limit: float | None = None
    limit_label: str | None = None
    ratio: float | None = None
    target: str | None = None
    passed: bool | None = None  # "pass" in the JSON (a keyword in Python)

    @classmethod
    def against(cls, label: str, value: float, unit: str, limit: float | None, limit_label: str,
                target: str | None = None) -> "Row":
        """A row whose ratio is value / limit, and whose pass follows from the target when it parses."""
        ratio = value / limit if limit else None
        bound = Target.parse(target)
        passed = bound.met_by(ratio) if bound and ratio is not None else None
        return cls(label, value, unit, limit, limit_label if limit else None, ratio, target, passed)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass"] = data.pop("passed")
        return data

    @classmethod
    def from_json(cls, item: Any, where: str) -> "Row":
        if not isinstance(item, dict):
            raise ResultsError(f"{where}: a row must be an object")
        return cls(label=_text(item, "label", where), value=_number(item, "value", where),
                   unit=_text(item, "unit", where, optional=True) or "",
                   limit=_number(item, "limit", where, optional=True),
                   limit_label=_text(item, "limit_label", where, optional=True),
                   ratio=_number(item, "ratio", where, optional=True),
                   target=_text(item, "target", where, optional=True),
                   passed=_boolean(item, "pass", where))


@dataclass(frozen=True)
class Series:
    """y against x, e.g. IBD time per 1,000 blocks against the chain's length."""

    x_label: str
    y_label: str
    points: list[tuple[float, float]]
    title: str | None = None
    limit: float | None = None  # drawn as a horizontal line
    limit_label: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"x_label": self.x_label, "y_label": self.y_label,
                                "points": [list(point) for point in self.points]}
        for key in ("title", "limit", "limit_label"):  # optional keys: left out when empty
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_json(cls, item: Any, where: str) -> "Series":
        if not isinstance(item, dict):
            raise ResultsError(f"{where}: a series must be an object")
        points = item.get("points")
        if not isinstance(points, list) or not all(_is_pair(point) for point in points):
            raise ResultsError(f"{where}: 'points' must be a list of [x, y] number pairs")
        return cls(_text(item, "x_label", where), _text(item, "y_label", where),
                   [(float(x), float(y)) for x, y in points], _text(item, "title", where, optional=True),
                   _number(item, "limit", where, optional=True), _text(item, "limit_label", where, optional=True))


@dataclass(frozen=True)
class RunInfo:
    """When and where a run was made: absolute figures only mean something next to the load."""

    date: str
    commit: str
    load: tuple[float, float, float]
    cpus: int

    @classmethod
    def now(cls) -> "RunInfo":
        load = tuple(round(value, 2) for value in os.getloadavg())
        return cls(datetime.now(timezone.utc).isoformat(timespec="seconds"), source_commit(), load,
                   os.cpu_count() or 1)

    def caption(self) -> str:
        """One line for under a figure's title."""
        try:
            when = datetime.fromisoformat(self.date).strftime("%Y-%m-%d %H:%M %Z").strip()
        except ValueError:
            when = self.date
        one, five, fifteen = self.load
        return f"{when}, commit {self.commit}, load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {self.cpus} CPUs"

    @classmethod
    def from_json(cls, item: Any, where: str) -> "RunInfo":
        if not isinstance(item, dict):
            raise ResultsError(f"{where}: 'run' must be an object")
        load = item.get("load")
        if not isinstance(load, list) or len(load) != 3 or not all(_is_number(v) for v in load):
            raise ResultsError(f"{where}: 'run.load' must be [1m, 5m, 15m]")
        cpus = item.get("cpus")
        if type(cpus) is not int:
            raise ResultsError(f"{where}: 'run.cpus' must be an integer")
        return cls(_text(item, "date", where), _text(item, "commit", where), (load[0], load[1], load[2]), cpus)


@dataclass(frozen=True)
class Results:
    """One benchmark run: what benchmarks/results/NAME.json holds."""

    benchmark: str
    run: RunInfo
    rows: list[Row]
    series: dict[str, Series] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"benchmark": self.benchmark,
                                "run": {**asdict(self.run), "load": list(self.run.load)},
                                "rows": [row.to_json() for row in self.rows]}
        if self.series:
            data["series"] = {name: series.to_json() for name, series in self.series.items()}
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Results":
        if not isinstance(data, dict):
            raise ResultsError(f"{where}: the top level must be an object")
        name = _text(data, "benchmark", where)
        if not re.fullmatch(r"[\w.-]+", name):
            raise ResultsError(f"{where}: 'benchmark' must be a file-name-safe word, not {name!r}")
        rows = data.get("rows")
        if not isinstance(rows, list):
            raise ResultsError(f"{where}: 'rows' must be a list")
        series = data.get("series") or {}
        if not isinstance(series, dict) or not all(re.fullmatch(r"[\w.-]+", key) for key in series):
            raise ResultsError(f"{where}: 'series' must map file-name-safe names to series")
        return cls(name, RunInfo.from_json(data.get("run"), where),
                   [Row.from_json(row, f"{where}, row {i + 1}") for i, row in enumerate(rows)],
                   {key: Series.from_json(value, f"{where}, series {key!r}") for key, value in series.items()})


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)


def _text(item: dict, key: str, where: str, optional: bool = False) -> str | None:
    value = item.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ResultsError(f"{where}: '{key}' must be text")
    return value


def _number(item: dict, key: str, where: str, optional: bool = False) -> float | None:
    value = item.get(key)
    if value is None and optional:
        return None
    if not _is_number(value):
        raise ResultsError(f"{where}: '{key}' must be a finite number")
    return float(value)


def _boolean(item: dict, key: str, where: str) -> bool | None:
    value = item.get(key)
    if value is not None and not isinstance(value, bool):
        raise ResultsError(f"{where}: '{key}' must be true, false or null")
    return value


def source_commit() -> str:
    """The commit measured (with -dirty for uncommitted changes); "unknown" outside a git checkout."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


def write_results(results: Results, directory: Path = RESULTS_DIR) -> Path:
    """Write NAME.json (via a temporary file, so a reader never sees half of it); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{results.benchmark}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(results.to_json(), indent=1, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


def load_results(path: Path) -> Results:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ResultsError(f"{path}: {error}") from None
    return Results.from_json(data, str(path))


# -- numbers as a reader wants them -----------------------------------------------------------------------


def three_digits(value: float) -> str:
    """Three significant digits without an exponent: 221, 39.6, 4.1, 0.64."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def short_number(value: float) -> str:
    """221k, 1.36 M, 51.2: how the benchmarks' tables write figures."""
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, "k")):
        if abs(value) >= scale:
            return three_digits(value / scale) + suffix
    return three_digits(value)


def ratio_text(ratio: float) -> str:
    """0.85×, 1.37×, 143×: two decimals where they matter."""
    return (f"{ratio:.2f}" if abs(ratio) < 10 else three_digits(ratio)) + "×"


def with_unit(value: float, unit: str) -> str:
    return f"{short_number(value)} {unit}".strip()


# -- drawing ------------------------------------------------------------------------------------------------


def import_pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed); ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def ratio_axis_end(rows: Sequence[Row]) -> float:
    """Where the ratio axis ends: past every bar, but not so far that one outlier flattens the rest."""
    bounds = [t.bound for t in (Target.parse(row.target) for row in rows) if t]
    anchor = max([1.0, *bounds])
    reach = max(row.ratio for row in rows if row.ratio is not None)
    return max(min(reach, CLIP_FACTOR * anchor), *bounds, 1.0) * 1.2  # 1.2: room for the last bar's label


def balanced_lines(text: str, width: int) -> str:
    """text in lines of at most about width characters, of even length (no lone last word)."""
    lines = math.ceil(len(text) / width)
    return textwrap.fill(text, math.ceil(len(text) / lines) + 4, break_on_hyphens=False)


def bar_colour(row: Row) -> str:
    if row.passed is None:
        return PLAIN_COLOUR
    return PASS_COLOUR if row.passed else MISS_COLOUR


def bar_note(row: Row, usual_limit: str | None) -> str:
    """The figures behind a ratio, and the verdict: what the text column beside each bar says.

    The limit is named only when it is not the usual one, which the axis label names.
    """
    if row.limit is None:  # a ratio given without its limit
        note = with_unit(row.value, row.unit)
    else:
        note = f"{short_number(row.value)} vs {with_unit(row.limit, row.unit)}"
    if row.limit_label and row.limit_label != usual_limit:
        note += f"\nlimit: {row.limit_label}"
    if row.target:
        verdict = {True: "PASS", False: "MISS", None: ""}[row.passed]
        note += f"\ntarget {row.target.strip()}" + (f": {verdict}" if verdict else "")
    return "\n".join(textwrap.fill(line, NOTE_WIDTH, subsequent_indent="  ", break_on_hyphens=False)
                     for line in note.split("\n"))


def draw_ratios(results: Results, path: Path) -> Path | None:
    """The bar chart of every row with a ratio; None when no row has one."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pyplot = import_pyplot()
    rows = [row for row in results.rows if row.ratio is not None]
    if not rows:
        return None
    end = ratio_axis_end(rows)
    labels = Counter(row.limit_label for row in rows if row.limit_label)
    usual_limit = labels.most_common(1)[0][0] if labels else None
    top, bottom = 0.95, 1.0  # inches: title and caption above; axis label and legend below
    lines = [bar_note(row, usual_limit).count("\n") + 1 for row in rows]
    height = top + bottom + sum(max(0.5, 0.16 * count + 0.08) for count in lines)
    figure, axes = pyplot.subplots(figsize=(11, height))
    figure.subplots_adjust(left=0.31, right=0.70, top=1 - top / height, bottom=bottom / height)
    positions = list(range(len(rows)))[::-1]  # the first row on top, as in the benchmark's table
    for y, row in zip(positions, rows):
        clipped = row.ratio > end
        axes.barh(y, min(row.ratio, end), height=0.62, color=bar_colour(row), hatch="//" if clipped else None,
                  edgecolor="white" if clipped else None)
        bound = Target.parse(row.target)
        if bound is not None:
            axes.plot([bound.bound] * 2, [y - 0.42, y + 0.42], color="black", linewidth=2.2, linestyle=(0, (2, 1)))
        label = ratio_text(row.ratio) + (" ▶" if clipped else "")
        if clipped or row.ratio + end * (0.012 + LABEL_SPAN) > end:  # no room on the right: inside the bar's end
            axes.text(min(row.ratio, end) - end * 0.01, y, label, va="center", ha="right", fontsize=9,
                      fontweight="bold", color="white")
        else:  # right of the bar; past its target line if the line would cross the label
            x = row.ratio + end * 0.012
            if bound is not None and row.ratio < bound.bound < x + end * LABEL_SPAN:
                x = bound.bound + end * 0.012
            axes.text(x, y, label, va="center", ha="left", fontsize=9, fontweight="bold")
        axes.text(1.02, y, bar_note(row, usual_limit), transform=axes.get_yaxis_transform(), va="center", fontsize=8.5,
                  linespacing=1.25)
    axes.axvline(1.0, color="0.45", linewidth=1, zorder=0)
    axes.set_yticks(positions, [balanced_lines(row.label, LABEL_WIDTH) for row in rows], fontsize=9)
    axes.set_ylim(-0.7, len(rows) - 0.3)
    axes.set_xlim(0, end)
    usual = f"{usual_limit} unless the row names another, " if usual_limit else ""
    axes.set_xlabel(f"ratio: measured value / its limit from the same run ({usual}1× = the limit)")
    axes.grid(axis="x", color="0.9")
    axes.set_axisbelow(True)
    figure.text(0.02, 1 - 0.3 / height, f"{results.benchmark} benchmark: measured against the limit of the same run",
                fontsize=12, fontweight="bold", va="center")
    figure.text(0.02, 1 - 0.58 / height, results.run.caption(), fontsize=8.5, color="0.3", va="center")
    legend = [Patch(color=PASS_COLOUR, label="target met"), Patch(color=MISS_COLOUR, label="target missed"),
              Patch(color=PLAIN_COLOUR, label="no target"),
              Line2D([], [], color="black", linewidth=2.2, linestyle=(0, (2, 1)), label="target"),
              Line2D([], [], color="0.45", linewidth=1, label="1× = the limit")]
    if any(row.ratio > end for row in rows):
        legend.append(Patch(facecolor=PLAIN_COLOUR, hatch="//", edgecolor="white", label="bar cut off (value written)"))
    figure.legend(handles=legend, loc="center", bbox_to_anchor=(0.5, 0.25 / height), ncol=len(legend), fontsize=8,
                  frameon=False)
    return save(figure, path)


def draw_series(results: Results, name: str, series: Series, path: Path) -> Path:
    """A line with a marker and its value at every point, from zero up, and the limit as a dashed line."""
    pyplot = import_pyplot()
    figure, axes = pyplot.subplots(figsize=(8, 4.6))
    xs, ys = zip(*sorted(series.points)) if series.points else ((), ())
    many = len(xs) > ANNOTATED_POINTS
    axes.plot(xs, ys, marker="o", markersize=4 if many else 6, color=LINE_COLOUR, linewidth=2, label=series.y_label)
    written = {0, len(xs) - 1, ys.index(max(ys))} if many else range(len(xs))
    for x, y in (point for i, point in enumerate(zip(xs, ys)) if i in written):
        axes.annotate(short_number(y), (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=9)
    if series.limit is not None:
        axes.axhline(series.limit, color=LIMIT_COLOUR, linestyle="--", linewidth=1.5,
                     label=series.limit_label or f"limit {short_number(series.limit)}")
        axes.legend(fontsize=9, loc="lower right")
    top = max([*ys, series.limit or 0, 0.0])
    axes.set_ylim(0, top * 1.18 or 1)
    axes.set_xlim(0, max(xs, default=1) * 1.05)
    axes.set_xlabel(series.x_label)
    axes.set_ylabel(series.y_label)
    axes.grid(color="0.9")
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}")
    title = series.title or f"{results.benchmark}: {name.replace('-', ' ').replace('_', ' ')}"
    axes.set_title(f"{title}\n", fontsize=12, fontweight="bold", loc="left")
    axes.text(0, 1.02, results.run.caption(), transform=axes.transAxes, fontsize=8.5, color="0.3")
    figure.tight_layout()
    return save(figure, path)


def save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    import_pyplot().close(figure)
    return path


def draw_results(results: Results, image_dir: Path) -> list[Path]:
    """Every figure of one benchmark; the files written."""
    written = [draw_ratios(results, image_dir / f"{results.benchmark}-ratios.png")]
    written += [draw_series(results, name, series, image_dir / f"{results.benchmark}-{name}.png")
                for name, series in results.series.items()]
    return [path for path in written if path is not None]


# -- the command line -----------------------------------------------------------------------------------


def results_files(results_dir: Path, names: Sequence[str]) -> list[Path]:
    if names:
        return [results_dir / f"{name}.json" for name in names]
    return sorted(results_dir.glob("*.json"))


def main(argv: Sequence[str] | None = None) -> int:
    """0 when every figure was drawn, 1 when a results file was bad or missing, 2 without matplotlib."""
    parser = argparse.ArgumentParser(description="Draw docs/img/*.png from benchmarks/results/*.json.")
    parser.add_argument("names", nargs="*", help="benchmarks to draw (default: every results file)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the NAME.json files are")
    parser.add_argument("--out", type=Path, default=IMAGE_DIR, help="where the figures go (default docs/img)")
    args = parser.parse_args(argv)
    try:
        import_pyplot()
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    files = results_files(args.results, args.names)
    if not files:
        print(f"no results in {args.results}: run a benchmark first", file=sys.stderr)
        return 1
    status = 0
    for path in files:
        try:
            written = draw_results(load_results(path), args.out)
        except ResultsError as error:
            print(f"skipped: {error}", file=sys.stderr)
            status = 1
            continue
        for image in written:
            print(f"[PLOT] {image.relative_to(ROOT) if image.is_relative_to(ROOT) else image}")
    return status


if __name__ == "__main__":
    sys.exit(main())
