"""`make site`: the companion as static HTML, readable without running anything.

Renders the executed notebooks of the last `make reproduce` (committed under `figures/executed/`, so a fresh
clone has them) with nbconvert, one page per notebook with every figure inlined, and writes an index that
maps each paper table and figure to its page, its figure and its claims with their verdicts:

    python -m kdlib._site [--out site] [--executed figures/executed]
"""
from __future__ import annotations

import argparse
import html
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ROOT / "figures" / "executed"

# (paper, result, notebook, a figure of figures/<notebook>/ or None)
RESULTS = [
    ("—", "Quickstart: SFT, supervised KD and on-policy GKD from one student, paired", "00_quickstart",
     "differences_summ.png"),
    ("GKD", "Fig. 1: methods across student sizes", "01_gkd", "fig1_methods_sizes.png"),
    ("GKD", "Fig. 6: divergence × student-data fraction λ", "01_gkd", "fig6_divergence_lambda.png"),
    ("GKD", "Fig. 3: data efficiency", "01_gkd", "fig3_data_efficiency.png"),
    ("GKD", "Fig. 4: quality against diversity under sampling", "01_gkd", "fig4_quality_diversity.png"),
    ("SWITCH", "Main table", "02_switch", "main_table.png"),
    ("SWITCH", "Gain by response length", "02_switch", "length_buckets.png"),
    ("SWITCH", "Threshold schedule ablation", "02_switch", "schedule_ablation.png"),
    ("SWITCH", "Teacher-token share against the decay", "02_switch", "decay_sweep.png"),
    ("AdaSwitch", "Main table (with the GSM-Plus analog)", "03_adaswitch", "main_table.png"),
    ("AdaSwitch", "Switch rate per task and switch positions", "03_adaswitch", "switch_rate.png"),
    ("AdaSwitch", "Divergence over training, learning curves", "03_adaswitch", "training_curves.png"),
    ("AdaSwitch", "K × window sensitivity", "03_adaswitch", "k_window.png"),
    ("AdaSwitch", "Robustness to the distance", "03_adaswitch", "distance.png"),
    ("AdaSwitch", "Cost per step", "03_adaswitch", "runtime.png"),
    ("—", "Your pair and data: the adaptation workbench", "04_your_pair", "comparison.png"),
    ("—", "kdlib's AdaSwitch and JSD inside TRL's GKD trainer", "05_trl", "trl_vs_kdlib.png"),
]

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left;
vertical-align:top}img.thumb{max-width:260px}li.reproduced{color:#135d1b}li.reversed{color:#8a1c1c}
li{margin:.25em 0}code{background:#f4f4f4}"""


def render_notebook(src: Path, out_dir: Path) -> Path:
    """One executed notebook as a standalone HTML page (figures inlined as data URIs by the notebook itself)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:  # progress bars and library notices (stderr) are noise to a reader
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    page = out_dir / f"{src.stem}.html"
    page.write_text(body)
    return page


def _claims(notebook: str) -> str:
    path = ROOT / "figures" / notebook / "claims.md"
    if not path.exists():
        return ""
    items = []
    for line in path.read_text().splitlines():
        if line.startswith("- "):
            text = line[2:]
            verdict = next((v for v in ("reproduced", "reversed", "not separated") if f"→ {v}" in text), "")
            items.append(f'<li class="{verdict.replace(" ", "-")}">{html.escape(text)}</li>')
    return f"<ul>{''.join(items)}</ul>" if items else ""


def index_page(out_dir: Path, pages: dict[str, Path]) -> Path:
    """The map from each paper result to its page, its figure (from figures/) and the notebook's claims."""
    rel = lambda p: Path("..") / p.relative_to(ROOT) if out_dir.resolve().parent == ROOT else p.resolve()  # noqa: E731
    rows = []
    for paper, result, nb, figure in RESULTS:
        link = f'<a href="{pages[nb].name}">{nb}</a>' if nb in pages else f"{nb} (not executed)"
        fig = ROOT / "figures" / nb / figure if figure else None
        img = (f'<a href="{rel(fig)}"><img class="thumb" src="{rel(fig)}" alt="{html.escape(result)}"></a>'
               if fig is not None and fig.exists() else "")
        rows.append(f"<tr><td>{paper}</td><td>{html.escape(result)}</td><td>{link}</td><td>{img}</td></tr>")
    lists = {nb: _claims(nb) for nb in dict.fromkeys(r[2] for r in RESULTS)}  # each claims.md read once
    claims = "".join(f'<h3 id="claims-{nb}">{nb}: claims and verdicts</h3>{items}'
                     for nb, items in lists.items() if items)
    page = out_dir / "index.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>kdlib: the companion</title>
<style>{STYLE}</style></head><body>
<h1>kdlib — GKD, SWITCH and AdaSwitch, run on a CPU</h1>
<p>Each paper result, the executed notebook that regenerates it, and its figure from the last
<code>make reproduce</code>. A claim reads <em>reproduced</em> only when the 95 % interval of the paired difference
(seeds × items) lies on the paper's side of zero.</p>
<table><tr><th>paper</th><th>result</th><th>page</th><th>figure</th></tr>{''.join(rows)}</table>
<h2>Claims</h2>{claims}</body></html>""")
    return page


def build(out_dir: Path = ROOT / "site", executed: Path = EXECUTED) -> Path:
    notebooks = sorted(executed.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no executed notebook in {executed}: run `make reproduce` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = {nb.stem: render_notebook(nb, out_dir) for nb in notebooks}
    return index_page(out_dir, pages)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "site"), help="folder for the HTML pages (default: site/)")
    ap.add_argument("--executed", default=str(EXECUTED), help="executed notebooks to render")
    args = ap.parse_args(argv)
    print(build(Path(args.out), Path(args.executed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
