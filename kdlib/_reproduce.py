"""Execute the numbered notebooks through papermill: ``python -m kdlib._reproduce [--smoke]``.

- default (embedded profile): every notebook with its own parameters; figures and tables go to
  ``figures/<notebook>/``; the executed copies to ``.cache/executed/``.
- ``--smoke``: every notebook at its smallest settings, with a throw-away cache and output folder,
  so CI executes every cell in seconds without touching the committed figures.
- ``--profile paper``: the paper profile's parameters (GPU machines with hub access);
  ``--dry-run`` prints the runs it would launch instead.
- ``--steps N``: notebooks 01-03 with N distillation steps instead of the protocol's 150 (300: where the
  curves level off, an estimated 95-100 min from an empty cache, and ~20 min more for notebook 02's seeds 5-9 of
  SWITCH and its best baseline, `EXTRA_SEEDS`); figures to ``figures/steps-N/<notebook>/``, the committed ones
  untouched.

A failure names the notebook and the cell that failed; the run stops there.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kdlib import _paper as paper
from kdlib._paper import TABLES
from kdlib._runcache import finished_runs, run_seconds, run_seconds_by_kind, shipped_among
from kdlib._timing import Stopwatch, cpu_kernels, host_probe

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


# The order notebooks start in when several run at once: the longest first, and 02 (which reads 01's summ runs)
# after 01 and 03 (which share none), so that no notebook waits on a run another one is training. Notebooks
# not named here start last, in name order.
START_ORDER = ("01_gkd", "03_adaswitch", "02_switch", "00_quickstart", "04_your_pair", "05_trl")


STEPS_NOTEBOOKS = ("01_gkd", "02_switch", "03_adaswitch")  # the notebooks with a `steps` parameter

# Notebook 02's headline comparison, SWITCH against its best baseline, on more seeds than the rest of its grid:
# with --steps (300: where the curves level off) seeds 5-9 for those two methods alone (a 10-seed pilot
# separated the difference there, 5 seeds did not; docs/workload.md); the smoke run adds one seed, so CI
# executes that cell. The protocol's 150 steps keep five seeds (the 60-min budget).
EXTRA_SEEDS = {"02_switch": {"steps": [5, 6, 7, 8, 9], "smoke": [1]}}


def notebooks(only: list[str] | None = None) -> list[Path]:
    rank = {name: i for i, name in enumerate(START_ORDER)}
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"), key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    if only:
        found = [p for p in found if any(o in p.stem for o in only)]
    return found


def execute(path: Path, parameters: dict, out_path: Path, env: dict | None = None) -> float:
    """Run one notebook with papermill; raise naming the notebook if a cell fails."""
    import papermill

    out_path.parent.mkdir(parents=True, exist_ok=True)
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    t0 = time.time()
    try:
        papermill.execute_notebook(str(path), str(out_path), parameters=parameters, kernel_name="python3",
                                   cwd=str(NOTEBOOKS), progress_bar=False, log_output=False)
    except papermill.PapermillExecutionError as e:
        raise SystemExit(f"notebook {path.name} failed in cell {e.cell_index}: {e.ename}: {e.evalue}\n"
                         f"(executed copy with the traceback: {out_path})") from None
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="smallest settings, throw-away outputs")
    ap.add_argument("--profile", default="embedded", choices=("embedded", "paper"))
    ap.add_argument("--dry-run", action="store_true", help="paper profile: list the runs, run nothing")
    ap.add_argument("--only", nargs="*", help="substrings of notebook names to run")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"distillation steps of notebooks {', '.join(STEPS_NOTEBOOKS)} (default: each notebook's "
                         "own); figures go to figures/steps-N/")
    ap.add_argument("--jobs", type=int, default=None,
                    help="notebooks run at once (default: 2 for the embedded profile on >= 2 cores, else 1); "
                         "runs they share are trained once (a lock per run)")
    args = ap.parse_args(argv)
    if args.dry_run:
        if args.profile != "paper":
            ap.error("--dry-run is for --profile paper")
        paper.dry_run()
        return 0

    selected = notebooks(args.only)  # (the cache before the run is read below, to count the runs trained)
    if args.profile == "paper":  # the notebooks with paper tables; their figures go to figures/paper/
        selected = [nb for nb in selected if nb.stem in {t.notebook for t in TABLES.values()}]
    if args.steps is not None:
        if args.steps < 1 or args.smoke or args.profile != "embedded":
            ap.error(f"--steps takes a positive number of steps, for the embedded profile only; got {args.steps}")
        selected = [nb for nb in selected if nb.stem in STEPS_NOTEBOOKS]
    if not selected:
        ap.error(f"no notebook in {NOTEBOOKS} matches --only {' '.join(args.only or [])}")
    jobs = args.jobs or (min(2, os.cpu_count() or 1) if args.profile == "embedded" and not args.smoke else 1)
    jobs = min(jobs, len(selected))  # one notebook alone keeps every thread
    executed = ROOT / ".cache" / "executed" / (f"steps-{args.steps}" if args.steps is not None else "")
    timed = args.profile == "embedded" and not args.smoke and not args.only and args.steps is None
    probe_before = host_probe() if timed else None  # the host's speed beside the times it writes
    watch = Stopwatch()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kdlib-smoke-") as tmp:
        # the kernels' progress bars redraw at most every 30 s: each redraw is an output message that papermill
        # appends to the executed notebook and re-saves (per-step redraws cost the papermill process a quarter
        # of a core and filled the executed notebooks with thousands of bar lines)
        env = {"TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "30")}
        if args.smoke:
            env["KDLIB_CACHE"] = str(Path(tmp) / "cache")
        if jobs > 1:  # small CPU models: one thread per notebook beats two notebooks fighting over threads
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        os.environ.update(env)  # the notebook kernels inherit it

        def one(nb: Path) -> float:
            params = {"profile": args.profile}
            if args.smoke:
                params.update(smoke=True, seeds=[0], out_dir=str(Path(tmp) / "figures" / nb.stem))
            # relative paths, which the notebooks resolve from the repository root: the executed copies that are
            # committed name no machine's checkout
            elif args.profile == "paper":  # never overwrite the committed embedded figures
                params.update(out_dir=f"figures/paper/{nb.stem}")
            elif args.steps is not None:  # nor with another number of steps
                params.update(steps=args.steps, out_dir=f"figures/steps-{args.steps}/{nb.stem}")
            else:  # the committed figures: only make reproduce writes them (by hand, a notebook writes .cache/)
                params.update(out_dir=f"figures/{nb.stem}")
            mode = "smoke" if args.smoke else "steps" if args.steps is not None else ""
            if mode in EXTRA_SEEDS.get(nb.stem, {}):
                params["extra_seeds"] = EXTRA_SEEDS[nb.stem][mode]
            print(f"[reproduce] {nb.name} ({'smoke' if args.smoke else args.profile}) ...", flush=True)
            took = execute(nb, params, (Path(tmp) if args.smoke else executed) / nb.name)
            committed = not args.smoke and args.profile == "embedded" and args.steps is None
            if committed and (executed / nb.name).exists():  # for `make site`
                (ROOT / "figures" / "executed").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(executed / nb.name, ROOT / "figures" / "executed" / nb.name)
            seconds[nb.stem] = took
            print(f"[reproduce] {nb.name} done in {took:.0f} s ({took / 60:.1f} min)", flush=True)
            return took

        try:
            run_all(one, selected, jobs)
        except SystemExit as e:
            if args.smoke:  # the temporary folder goes away: keep the failing executed copy where it can be read
                kept = executed / "failed"
                kept.mkdir(parents=True, exist_ok=True)
                for nb in Path(tmp).glob("*.ipynb"):
                    (kept / nb.name).write_bytes(nb.read_bytes())
                raise SystemExit(str(e.code).replace(str(tmp), str(kept))) from None
            raise
    wall = time.time() - watch.start
    print(f"[reproduce] all notebooks done in {wall:.0f} s ({wall / 60:.1f} min wall, {jobs} at a time)")
    if timed:  # (the second probe runs after the wall time is read, as the first ran before it started)
        _write_times(seconds, jobs, watch.elapsed(), (probe_before, host_probe()))
    return 0


def run_all(one, selected: list[Path], jobs: int) -> None:
    """`one(notebook)` for each notebook, `jobs` at a time. The first failure (a SystemExit naming notebook
    and cell) is printed at once and stops the run: queued notebooks never start; a notebook already running
    beside it runs to its end (its finished runs stay in the cache; Ctrl-C stops it sooner), then the failure
    is raised."""
    if jobs == 1:
        for nb in selected:
            one(nb)
        return
    import threading
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    stop = threading.Event()

    def guarded(nb: Path):
        if stop.is_set():  # a notebook failed meanwhile: this queued one never starts
            return None
        try:
            return one(nb)
        except BaseException:
            stop.set()
            raise

    pool = ThreadPoolExecutor(jobs)
    futures = [pool.submit(guarded, nb) for nb in selected]
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    failed = [f for f in done if f.exception() is not None]
    if failed:
        pool.shutdown(wait=False, cancel_futures=True)
        print(f"[reproduce] {failed[0].exception()}\n[reproduce] stopping: queued notebooks are not started; "
              "a notebook already running finishes first (Ctrl-C stops it)", flush=True)
        raise failed[0].exception()
    pool.shutdown()


def _write_times(seconds: dict, jobs: int, elapsed: dict, probes: tuple[float, float] | None = None) -> None:
    """figures/reproduce_times.md: how long this `make reproduce` took, per notebook, and how many runs it
    trained (0 = everything came from the cache), so the README's times come from a recorded run; `probes`:
    `host_probe`'s seconds per step before and after the notebooks, the host's speed."""
    import platform
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    lines = [f"`make reproduce` (embedded profile) on {time.strftime('%Y-%m-%d')}, commit {commit}, "
             f"{os.cpu_count()} CPU cores ({platform.machine()}, torch's {cpu_kernels()['cpu_kernels']} kernels), "
             f"{jobs} notebook(s) at a time; "
             f"{elapsed['trained']} run(s) trained, {elapsed['shipped']} copied from kdlib's shipped runs "
             f"(KDLIB_SHIPPED={os.environ.get('KDLIB_SHIPPED', '1')}), the rest read from the cache.", "",
             "| notebook | minutes |", "|---|---:|"]
    lines += [f"| {nb} | {s / 60:.1f} |" for nb, s in sorted(seconds.items())]
    lines += [f"| **total (wall)** | **{elapsed['seconds'] / 60:.1f}** |", ""]
    # a run interrupted and resumed across invocations (the cache keeps finished runs) makes the wall total
    # above only the last part: the runs' own recorded times say what all of the training cost
    everything = finished_runs()
    trained = everything - shipped_among(everything)
    lines += [f"The runs this invocation trained took {elapsed['trained_seconds'] / 3600:.2f} h of their own wall "
              f"time in all ({jobs} at a time). All {len(trained)} trained runs in the cache (not shipped) took "
              f"{run_seconds(trained) / 3600:.2f} h, whichever invocation trained them: when this invocation "
              f"resumed an interrupted one, that sum divided by the notebooks run at once, plus the notebooks' "
              f"own time above, approximates a cold run.", ""]
    lines += ["Where that time went (the trained runs in the cache by kind; `sft from scratch` are the students' SFT "
              "warm-ups):", "", "| method | task | student | steps | runs | lane-minutes | share |",
              "|---|---|---|---:|---:|---:|---:|"]
    total = run_seconds(trained) or 1.0
    lines += [f"| {' | '.join(map(str, kind))} | {n} | {s / 60:.1f} | {s / total:.0%} |"
              for kind, n, s in run_seconds_by_kind(trained)]
    lines += [""]
    if elapsed["host"]:
        lines += [f"During the run, {elapsed['host']} (a healthy machine: about 0 % and 100 %).", ""]
    if probes:
        from importlib import metadata

        before, after = probes
        lines += [f"Host speed (`host_probe`: one fixed student-s-shaped training step on one thread, median of "
                  f"30; torch {metadata.version('torch')}, transformers {metadata.version('transformers')}): "
                  f"{1000 * before:.1f} ms before the notebooks, {1000 * after:.1f} ms after. The same runs take "
                  f"longer on a slower host: compare this file's minutes with another run's on this machine beside "
                  f"the two runs' probes, which the steal and accounting counters above do not replace.", ""]
    (ROOT / "figures" / "reproduce_times.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
