"""The notebooks' figure helpers: readable difference plots (ticks that do not run together, the sample size
in the title) and the caption naming task, metric, student and steps under every saved figure."""
import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from kdlib import notebook as knb  # noqa: E402
from kdlib.notebook import plots  # noqa: E402


def small_differences() -> pd.DataFrame:
    """Differences of a few thousandths, as the 300-step schedule ablation's (whose sampled panel's tick
    labels once ran together: "−0.0075−0.0050−0.0025")."""
    rows = [("greedy", "linear", -0.001, -0.006, 0.003), ("greedy", "constant", 0.001, -0.002, 0.005),
            ("sampled T=1", "linear", -0.001, -0.009, 0.006), ("sampled T=1", "constant", -0.001, -0.008, 0.006)]
    return pd.DataFrame([{"eval": "test", "decoding": d, "better": "exp", "worse": w, "difference": m, "ci_low": lo,
                          "ci_high": hi, "seeds": 2, "items": 1000, "verdict": "not separated"}
                         for d, w, m, lo, hi in rows])


@pytest.fixture(autouse=True)
def no_caption():
    plots.style()
    yield
    plots.style()


def test_difference_ticks_do_not_overlap():
    fig = plots.differences(small_differences(), title="summ: exponential minus the other schedules")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert 2 <= len(boxes) <= 6
        boxes.sort(key=lambda b: b.x0)
        for left, right in zip(boxes, boxes[1:]):
            assert left.x1 < right.x0, [t.get_text() for t in ax.get_xticklabels()]


def test_difference_title_gives_the_sample_size_unless_it_names_the_seeds():
    fig = plots.differences(small_differences(), title="summ: exponential minus the others")
    assert fig._suptitle.get_text() == "summ: exponential minus the others (2 seeds × 1 000 items)"
    mixed = small_differences().assign(seeds=[2, 2, 5, 5])
    assert plots.differences(mixed, title="t")._suptitle.get_text() == "t (2–5 seeds × 1 000 items)"
    assert plots.differences(small_differences(), title="t; 2 seeds")._suptitle.get_text() == "t; 2 seeds"


def test_saved_figures_carry_the_caption_once(tmp_path):
    plots.style(caption=knb.caption(knb.protocol("summ", steps=300, student="student-s")))
    fig = plots.differences(small_differences(), title="t")
    plots.save_figure(fig, tmp_path, "a")
    plots.save_figure(fig, tmp_path, "a")  # saved again: still one caption
    captions = [t.get_text() for t in fig.texts if t.get_gid() == "kdlib-caption"]
    assert captions == ["task summ, metric ROUGE-L; student student-s; 300 distillation steps per run"]
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "a.pdf").stat().st_size > 0
    plots.style()
    other = plots.differences(small_differences(), title="t")
    plots.save_figure(other, tmp_path, "b")
    assert not [t for t in other.texts if t.get_gid() == "kdlib-caption"]


def test_caption_says_what_the_runs_were():
    base = knb.protocol("summ", steps=150, student="student-s")
    assert knb.caption(base, smoke=True).endswith("student tiny; 3 distillation steps per run")  # as the grids ran
    without = {k: v for k, v in base.items() if k != "student"}  # a notebook comparing students names none
    assert knb.caption(without) == "task summ, metric ROUGE-L; 150 distillation steps per run"
    assert knb.caption(base, tasks=["arith", "summ"]).startswith("tasks arith, summ; student student-s;")


def test_a_figure_can_take_its_own_caption(tmp_path):
    plots.style(caption="the notebook's")
    fig = plots.differences(small_differences(), title="t")
    plots.save_figure(fig, tmp_path, "a", caption="this figure's")
    assert [t.get_text() for t in fig.texts if t.get_gid() == "kdlib-caption"] == ["this figure's"]


def test_reference_lines_draw_a_legend_only_when_there_are_lines():
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2)
    plots.reference_lines(a, {"teacher": 0.9, "warm-up student": 0.6}, legend=True)
    plots.reference_lines(b, {}, legend=True)
    assert [t.get_text() for t in a.get_legend().get_texts()] == ["teacher 0.900", "warm-up student 0.600"]
    assert b.get_legend() is None


def test_caption_names_each_tasks_metric():
    assert "metric accuracy" in knb.caption(knb.protocol("arith", steps=150, student="student-s"))
    assert "150 distillation steps" in knb.caption(knb.protocol("arith", steps=150, student="student-s"))


def test_the_caption_sits_below_every_axis_label(tmp_path):
    plots.style(caption="task summ, metric ROUGE-L; student student-s; 300 distillation steps per run")
    fig = plots.differences(small_differences(), title="t")
    plots.save_figure(fig, tmp_path, "a")
    renderer = fig.canvas.get_renderer()
    caption = next(t for t in fig.texts if t.get_gid() == "kdlib-caption").get_window_extent(renderer)
    for ax in fig.axes:
        assert caption.y1 <= ax.xaxis.label.get_window_extent(renderer).y0


def test_setting_heatmaps_pair_a_column_within_each_seed():
    """Two seeds 0.3 apart, one setting 0.01 better in both: the paired panel shows +0.005 / −0.005 with sd
    0 (the setting's effect), the raw panel the seeds' spread."""
    rows = [{"seed": s, "k": k, "window": 4, "score": base + (0.01 if k == 10.0 else 0.0), "rate": base}
            for s, base in ((0, 0.3), (1, 0.6)) for k in (5.0, 10.0)]
    fig = plots.setting_heatmaps(pd.DataFrame(rows), "k", "window", {"score": "accuracy", "rate": "teacher"},
                                 paired=["score"], title="arith: ")
    paired, raw = fig.axes[:2]  # then the colour bars' axes
    assert [t.get_text() for t in paired.texts] == ["-0.005\n± 0.000", "+0.005\n± 0.000"]
    assert [t.get_text() for t in paired.get_yticklabels()] == ["5", "10"]
    assert paired.get_title() == "arith: accuracy − the seed's grid mean (mean ± sd, 2 seeds)"
    assert [t.get_text() for t in raw.texts] == ["0.450\n± 0.212", "0.450\n± 0.212"]  # the seeds' spread
    one_seed = plots.setting_heatmaps(pd.DataFrame(rows[:2]), "k", "window", {"score": "accuracy"}, paired=["score"])
    assert [t.get_text() for t in one_seed.axes[0].texts] == ["-0.005", "+0.005"]  # no "± nan"


def test_reference_points_mark_and_name_each_point():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    refs = pd.DataFrame([{"model": "teacher", "temperature": 1.0, "score": 0.9, "self_bleu": 40.0},
                         {"model": "warm-up student", "temperature": 0.5, "score": 0.6, "self_bleu": 70.0}])
    plots.reference_points(ax, refs, "self_bleu", "score", label="{model}, T = {temperature:g}")
    assert [t.get_text() for t in ax.texts] == ["teacher, T = 1", "warm-up student, T = 0.5"]
    assert [tuple(p) for p in ax.collections[0].get_offsets()] == [(40.0, 0.9), (70.0, 0.6)]


def test_a_paired_tables_bounds_keep_their_sign_and_digits_in_markdown(tmp_path):
    from kdlib.notebook import plots

    table = pd.DataFrame({"better": ["a"], "difference": [0.031], "ci_low": [0.0002], "ci_high": [0.062],
                          "verdict": ["reproduced"]})
    text = plots.save_table(table, tmp_path, "t").read_text()
    assert "+0.0002" in text and "0.000 " not in text and "+0.031" in text
    assert pd.read_csv(tmp_path / "t.csv").ci_low[0] == 0.0002  # the CSV keeps full precision
