"""`python -m workbench results`: render a results document from its template and the shipped result files.

The template is Markdown in which a line holding only a marker is replaced by what the marker names:

    <!-- table: PATH/results.csv [methods=a,b] [steps=2,4] [columns=fvd,solid] [reference=PATH/reference.csv] -->
        mean ± std over seeds of every metric column, in `report_markdown`'s layout (only `columns` if given);
        `methods` and `steps` keep those rows, `reference` adds the real clips' row;
    <!-- include: PATH.md -->
        a shipped table that has no results.csv behind it, verbatim;
    <!-- changes: PATH/results.csv stages=a,b,c steps=1,4 -->
        what each stage does to every column against the one before it, at each step count (`stage_changes`).

Headings inside a table become bold lines, so the document's outline is the template's. Paths are relative to the
working directory. Numbers reach the document only through these markers; the prose around them is the template's.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from workbench.eval.metrics import metric
from workbench.eval.tables import metric_columns, report_markdown, stage_changes, summarise, to_markdown

MARKER = re.compile(r"^<!--\s*(table|include|changes):\s*(\S+)((?:\s+\w+=\S+)*)\s*-->$")
OPTIONS = {"methods", "steps", "columns", "reference", "stages"}


def read_results_csv(path: str, needs: tuple[str, ...], loc: str = "") -> pd.DataFrame:
    """A CSV that has the columns `needs`; errors (ValueError, or FileNotFoundError) name the file, after the
    template line `loc` if given."""
    where = f"{loc}: {path}" if loc else path
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as e:          # pandas' ParserError and EmptyDataError are ValueErrors
        raise ValueError(f"{where}: not a CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in needs if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: no column {', '.join(missing)}; expected a table written by `workbench eval`")
    return df


def _keep(df: pd.DataFrame, column: str, wanted: list, where: str) -> pd.DataFrame:
    """Rows whose `column` is in `wanted`; every wanted value must occur."""
    missing = [w for w in wanted if w not in set(df[column])]
    if missing:
        raise ValueError(f"{where}: no {column} {', '.join(map(str, missing))} "
                         f"(has: {', '.join(map(str, df[column].unique()))})")
    return df[df[column].isin(wanted)]


def render_table(path: str, methods: list[str] | None = None, steps: list[int] | None = None,
                 columns: list[str] | None = None, reference: str | None = None, loc: str = "") -> str:
    """Mean ± std over seeds of a results.csv (one row per model x steps x seed): every metric column unless
    `columns` names some. `loc` (template:line) prefixes errors."""
    df = read_results_csv(path, ("method", "steps", "nfe", "seed", "num"), loc)
    where = f"{loc}: {path}" if loc else path
    if methods:
        df = _keep(df, "method", methods, where)
    if steps:
        df = _keep(df, "steps", steps, where)
    ref = read_results_csv(reference, ("method",), loc) if reference else None
    if columns:
        unknown = [c for c in columns if c not in metric_columns(df)]
        if unknown:
            raise ValueError(f"{where}: no metric column {', '.join(unknown)} (has: {', '.join(metric_columns(df))})")
        return to_markdown(summarise(df), columns, ref)
    text = report_markdown(df, ref)
    rest = [c for c in metric_columns(df) if metric(c) is None]
    if rest:  # report_markdown lays out the metric table's metrics; the honest table shows every column
        text += "\n## Other metrics\n\n" + to_markdown(summarise(df), rest, ref)
    return text


def _options(text: str, where: str) -> dict:
    """`methods=a,b steps=2,4` -> {'methods': ['a', 'b'], 'steps': [2, 4]}."""
    out = {}
    for item in text.split():
        key, value = item.split("=", 1)
        if key not in OPTIONS:
            raise ValueError(f"{where}: unknown option {key!r} (known: {', '.join(sorted(OPTIONS))})")
        values = [v for v in value.split(",") if v]
        if not values or key == "steps" and not all(v.isdigit() for v in values):
            raise ValueError(f"{where}: {key}={value}: expected a comma-separated list"
                             + (" of whole numbers" if key == "steps" else ""))
        out[key] = value if key == "reference" else [int(v) for v in values] if key == "steps" else values
    return out


def _bold_headings(text: str) -> str:
    """'## Results: ...' -> '**Results: ...**': a table's headings stay out of the document's outline."""
    return re.sub(r"^#+\s+(.*)$", r"**\1**", text, flags=re.M)


def render(template: str | Path) -> str:
    """The document: the template with every marker line replaced by its table."""
    template = Path(template)
    if not template.is_file():
        raise FileNotFoundError(f"{template}: no such template")
    out = [f"<!-- Rendered by `python -m workbench results` from {template.name}: edit that file, not this one. -->"]
    for n, line in enumerate(template.read_text().splitlines(), 1):
        m = MARKER.match(line.strip())
        if not m:
            if re.match(r"\s*<!--\s*(table|include|changes)\b", line):
                raise ValueError(f"{template}:{n}: malformed marker {line.strip()!r}")
            out.append(line)
            continue
        kind, path, where = m.group(1), m.group(2), f"{template}:{n}"
        if kind == "include":
            if m.group(3):
                raise ValueError(f"{where}: include takes no options")
            if not Path(path).is_file():
                raise FileNotFoundError(f"{where}: {path}: no such file")
            out += [f"Included verbatim from `{path}`:", "", _bold_headings(Path(path).read_text()).rstrip("\n")]
        elif kind == "changes":
            opts = _options(m.group(3), where)
            if set(opts) != {"stages", "steps"} or len(opts["stages"]) < 2:
                raise ValueError(f"{where}: changes takes stages=a,b[,...] (two or more) and steps=N[,...]")
            df = read_results_csv(path, ("method", "steps", "seed"), where)
            _keep(_keep(df, "method", opts["stages"], f"{where}: {path}"), "steps", opts["steps"], f"{where}: {path}")
            out += [f"Computed from `{path}` (beyond the spread: the means differ by more than the larger seed-std):",
                    "", stage_changes(df, opts["stages"], opts["steps"]).rstrip("\n")]
        else:
            opts = _options(m.group(3), where)
            scope = "".join(f", {k} {','.join(map(str, opts[k]))}" for k in ("methods", "steps") if k in opts)
            out += [f"Rendered from `{path}`{scope}:", "",
                    _bold_headings(render_table(path, loc=where, **opts)).rstrip("\n")]
    return "\n".join(out) + "\n"


def write(template: str | Path, out: str | Path) -> Path:
    """Render `template` into `out`."""
    out = Path(out)
    out.write_text(render(template))
    return out


def first_difference(template: str | Path, out: str | Path) -> str | None:
    """None if `out` is what `template` renders now; else where it first differs."""
    want, out = render(template).splitlines(), Path(out)
    if not out.is_file():
        return f"{out}: no such file"
    have = out.read_text().splitlines()
    for n, (a, b) in enumerate(zip(want, have), 1):
        if a != b:
            return f"{out}:{n} differs from what {template} renders"
    return None if len(want) == len(have) else f"{out}: {len(have)} lines, {template} renders {len(want)}"
