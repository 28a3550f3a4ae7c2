"""The data behind each section of the report: a plotly figure, or a note saying why there is
none, plus small tables. Nothing here writes HTML.

Huge studies are drawn from a subset of completed trials (the best half and an even spread of
the rest), because a parallel-coordinate or contour plot of 10,000 trials takes minutes and
hundreds of megabytes; the section's note says so.
"""

from __future__ import annotations

import dataclasses
import datetime
import warnings
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from tunefleet.report import _timeline as tl
from tunefleet.report._status import seconds
from tunefleet.report._trials import UNKNOWN_WORKER, completed, sample_trials, study_of

IMPORTANCE_LIMIT = 1000
# Optuna's default fANOVA (64 trees, depth 64) takes minutes on a few thousand noisy trials;
# shallower trees keep it near a second with the same ranking.
FANOVA = {"n_trees": 32, "max_depth": 6, "seed": 0}
PARALLEL_LIMIT = 1000
SLICE_LIMIT = 2000
CONTOUR_LIMIT = 300
PLOT_PARAMS = 8  # parallel coordinates and slices show the most important parameters
CONTOUR_PARAMS = 3  # contour plots of every pair among the 3 most important
TABLE_ROWS = 50

STATE_COLOURS = {"COMPLETE": "#4c78a8", "PRUNED": "#f58518", "FAIL": "#e45756",
                 "RUNNING": "#9d9da1"}


@dataclasses.dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclasses.dataclass
class Section:
    """One part of the report. A section meant to hold a chart and without ``figure`` has a
    ``note`` saying why; a note may also qualify a chart (e.g. drawn from a subset)."""

    key: str
    title: str
    figure: Any = None
    note: str | None = None
    table: Table | None = None
    chart: bool = True  # False for sections that are only a table


@dataclasses.dataclass
class Context:
    """What every section builder needs, read once from the storage."""

    study: optuna.Study
    trials: list[FrozenTrial]
    objective: int = 0
    now: float = dataclasses.field(default_factory=lambda: datetime.datetime.now().timestamp())
    _importances: dict[str, float] | None = None
    _importance_error: str | None = None
    _importance_done: bool = False

    @property
    def directions(self) -> list[optuna.study.StudyDirection]:
        return list(self.study.directions)

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1

    @property
    def complete(self) -> list[FrozenTrial]:
        return completed(self.trials)

    @property
    def target_name(self) -> str:
        names = self.study.metric_names
        if names and self.objective < len(names):
            return names[self.objective]
        return f"objective {self.objective}" if self.multi else "objective value"

    def target(self) -> Callable[[FrozenTrial], float] | None:
        """None for a single-objective study (Optuna's default), else the chosen objective."""
        if not self.multi:
            return None
        k = self.objective
        return lambda t: t.values[k]

    def subset(self, limit: int) -> tuple[optuna.Study, str | None]:
        """An in-memory study of at most LIMIT completed trials, and a note when it is a subset."""
        done = self.complete
        chosen = sample_trials(done, limit, objective=self.objective,
                               direction=self.directions[self.objective])
        note = None
        if len(chosen) < len(done):
            note = (f"drawn from {len(chosen):,} of {len(done):,} completed trials "
                    f"(the best {limit // 2:,} and an even spread of the rest)")
        return study_of(chosen, self.directions), note

    def param_names(self) -> list[str]:
        names: dict[str, None] = {}
        for t in self.complete:
            names.update(dict.fromkeys(t.params))
        return sorted(names)

    @property
    def importance_method(self) -> str:
        """fANOVA (Optuna's default) when scikit-learn is installed, else PED-ANOVA, which
        needs numpy only: the report then works with plotly alone (``tunefleet[report]``)."""
        from tunefleet._studies import module_installed

        return "fANOVA" if module_installed("sklearn") else "PED-ANOVA"

    def importances(self) -> dict[str, float] | None:
        """Importances of the chosen objective (computed once, see ``importance_method``), or
        None with an error."""
        if not self._importance_done:
            self._importance_done = True
            sub, _ = self.subset(IMPORTANCE_LIMIT)
            if self.importance_method == "fANOVA":
                evaluator: Any = optuna.importance.FanovaImportanceEvaluator(**FANOVA)
            else:
                evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = optuna.importance.get_param_importances(
                        sub, evaluator=evaluator, target=self.target())
                self._importances = {k: float(v) for k, v in found.items()}
            except Exception as exc:  # Optuna refuses some studies (e.g. conditional spaces)
                self._importance_error = _first_line(exc)
        return self._importances

    def top_params(self, n: int) -> list[str]:
        ranked = list((self.importances() or {}).keys())
        ranked += [p for p in self.param_names() if p not in ranked]
        return ranked[:n]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _needs_complete(ctx: Context, what: str) -> str | None:
    if not ctx.complete:
        return f"No {what}: the study has no completed trial yet."
    if not ctx.param_names():
        return f"No {what}: the completed trials have no parameters."
    return None


def best(ctx: Context) -> Section:
    sec = Section("best", "Best trial" if not ctx.multi else "Best trials (Pareto front)",
                  chart=False)
    done = ctx.complete
    if not done:
        sec.note = "No completed trial yet."
        return sec
    if ctx.multi:
        from tunefleet._optuna import pareto_front as _get_pareto_front_trials_by_trials

        front = _get_pareto_front_trials_by_trials(done, ctx.directions)
        names = ctx.study.metric_names or [f"objective {i}" for i in range(len(ctx.directions))]
        rows = [[t.number, *t.values, _params_text(t.params)] for t in front[:TABLE_ROWS]]
        sec.table = Table(["trial", *names, "params"], rows)
        if len(front) > TABLE_ROWS:
            sec.note = f"first {TABLE_ROWS} of {len(front)} Pareto-optimal trials"
        return sec
    trial = _best_of(ctx, done)
    rows: list[list[Any]] = [["trial", trial.number], [ctx.target_name, trial.value]]
    rows += [[f"param {k}", v] for k, v in trial.params.items()]
    bar = tl.bars([trial], ctx.now)
    if bar:
        rows += [["worker", bar[0].worker], ["duration", seconds(bar[0].duration)]]
    sec.table = Table(["", ""], rows)
    return sec


def _best_of(ctx: Context, done: Sequence[FrozenTrial]) -> FrozenTrial:
    sign = -1.0 if ctx.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(done, key=lambda t: sign * t.values[0])


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def history(ctx: Context) -> Section:
    sec = Section("history", "Optimization history")
    if not ctx.complete:
        sec.note = "No optimization history: the study has no completed trial yet."
        return sec
    # Every trial, not only completed ones: Optuna's plot indexes its values by trial number.
    sub = study_of(ctx.trials, ctx.directions)
    sec.figure = optuna.visualization.plot_optimization_history(
        sub, target=ctx.target(), target_name=ctx.target_name)
    return sec


def importances(ctx: Context) -> Section:
    sec = Section("importances", "Parameter importances")
    sec.note = _needs_complete(ctx, "parameter importances")
    if sec.note:
        return sec
    values = ctx.importances()
    if values is None:
        sec.note = f"Parameter importances cannot be computed: {ctx._importance_error}"
        return sec
    import plotly.graph_objects as go

    names = list(values)[::-1]
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h",
                           text=[f"{values[n]:.2f}" for n in names], textposition="outside",
                           marker_color="#4c78a8"))
    fig.update_layout(title=f"Importance for {ctx.target_name} ({ctx.importance_method})",
                      xaxis_title="importance", yaxis_title="parameter",
                      height=max(260, 80 + 28 * len(names)))
    sec.figure = fig
    _, sec.note = ctx.subset(IMPORTANCE_LIMIT)
    return sec


def parallel(ctx: Context) -> Section:
    return _top_params_plot(ctx, Section("parallel", "Parallel coordinates"), PARALLEL_LIMIT,
                            PLOT_PARAMS, optuna.visualization.plot_parallel_coordinate)


def slices(ctx: Context) -> Section:
    return _top_params_plot(ctx, Section("slice", "Slice plots"), SLICE_LIMIT, PLOT_PARAMS,
                            optuna.visualization.plot_slice)


def contour(ctx: Context) -> Section:
    return _top_params_plot(ctx, Section("contour", "Contour plots"), CONTOUR_LIMIT,
                            CONTOUR_PARAMS, optuna.visualization.plot_contour, _contour_gap)


def _contour_gap(ctx: Context) -> str | None:
    """Why there is no contour plot, beyond the lack of completed trials; None if there is one."""
    names = ctx.param_names()
    if len(names) < 2:
        return (f"No contour plot: it needs two parameters or more, and this study has "
                f"one ({names[0]}).")
    if len(ctx.complete) < 2:
        return "No contour plot: it needs two completed trials or more."
    return None


def _top_params_plot(ctx: Context, sec: Section, limit: int, n_params: int,
                     plot: Callable[..., Any],
                     gap: Callable[[Context], str | None] | None = None) -> Section:
    """SEC with Optuna's PLOT of the N_PARAMS most important parameters, drawn from at most
    LIMIT completed trials (the parallel-coordinate, slice and contour sections); or with the
    note saying why not (no completed trial, or what GAP finds missing)."""
    sec.note = _needs_complete(ctx, sec.title.lower()) or (gap(ctx) if gap else None)
    if sec.note:
        return sec
    sub, sec.note = ctx.subset(limit)
    params = ctx.top_params(n_params)
    sec.figure = plot(sub, params=params, target=ctx.target(), target_name=ctx.target_name)
    sec.note = _join(sec.note, _params_note(ctx, params))
    return sec


def pareto(ctx: Context) -> Section:
    sec = Section("pareto", "Pareto front")
    n = len(ctx.directions)
    if n not in (2, 3):
        sec.note = f"No Pareto front plot: it is drawn for 2 or 3 objectives, this study has {n}."
        return sec
    if not ctx.complete:
        sec.note = "No Pareto front: the study has no completed trial yet."
        return sec
    sub, sec.note = ctx.subset(PARALLEL_LIMIT)
    sec.figure = optuna.visualization.plot_pareto_front(
        sub, target_names=ctx.study.metric_names)
    return sec


def worker_timeline(ctx: Context) -> Section:
    sec = Section("timeline", "Trials per worker")
    bars = tl.bars(ctx.trials, ctx.now)
    if not bars:
        sec.note = "No timeline: no trial has started yet."
        return sec
    import plotly.graph_objects as go

    fig = go.Figure()
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        mine = [b for b in bars if b.state == state]
        if not mine:
            continue
        fig.add_trace(go.Bar(
            name=state.lower(), orientation="h", y=[b.worker for b in mine],
            base=[_iso(b.start) for b in mine], x=[b.duration * 1000.0 for b in mine],
            marker_color=STATE_COLOURS[state], marker_line_width=0,
            hovertext=[_hover(b) for b in mine], hoverinfo="text"))
    workers = sorted({b.worker for b in bars})
    fig.update_layout(barmode="overlay", xaxis_type="date", xaxis_title="time",
                      yaxis_title="worker", yaxis_categoryorder="category descending",
                      height=min(1600, 160 + 30 * len(workers)), legend_title="state")
    sec.figure = fig
    if any(b.worker == UNKNOWN_WORKER for b in bars):
        sec.note = ("Trials without tunefleet's worker record (run by plain Optuna) are shown "
                    f"as '{UNKNOWN_WORKER}'.")
    return sec


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(timespec="milliseconds")


def _hover(b: tl.Bar) -> str:
    value = "" if b.value is None else f", value {b.value:.6g}"
    return f"trial {b.number} ({b.state.lower()}) on {b.worker}: {seconds(b.duration)}{value}"


def worker_use(ctx: Context) -> Section:
    sec = Section("utilisation", "Worker utilisation")
    bars = tl.bars(ctx.trials, ctx.now)
    uses = tl.utilisation(bars, tl.hosts_by_worker(ctx.trials))
    if not uses:
        sec.note = "No utilisation: no trial has started yet."
        return sec
    import plotly.graph_objects as go

    names = [u.worker for u in uses][::-1]
    share = {u.worker: 100.0 * u.share for u in uses}
    fig = go.Figure(go.Bar(x=[share[n] for n in names], y=names, orientation="h",
                           text=[f"{share[n]:.0f}%" for n in names], textposition="auto",
                           marker_color="#54a24b"))
    fleet = tl.fleet_utilisation(uses) or 0.0
    fig.update_layout(title=f"Busy share of the study's time: {100 * fleet:.0f}% for the fleet",
                      xaxis_title="% of the study's time spent in trials", xaxis_range=[0, 100],
                      yaxis_title="worker", height=min(1600, 160 + 30 * len(uses)))
    sec.figure = fig
    sec.table = Table(
        ["worker", "host", "trials", "busy", "busy share of study time",
         "busy share of its own span"],
        [[u.worker, u.host or "", u.n_trials, seconds(u.busy), f"{100 * u.share:.0f}%",
          f"{100 * u.within_own:.0f}%"] for u in uses[:TABLE_ROWS]])
    if len(uses) > TABLE_ROWS:
        sec.note = f"table shows {TABLE_ROWS} of {len(uses)} workers"
    return sec


def _params_note(ctx: Context, shown: list[str]) -> str | None:
    total = len(ctx.param_names())
    if len(shown) < total:
        return f"the {len(shown)} most important of {total} parameters"
    return None


def _join(*notes: str | None) -> str | None:
    text = "; ".join(n for n in notes if n)
    return text[:1].upper() + text[1:] + "." if text else None


# key, title (used when the builder fails), builder
BUILDERS: list[tuple[str, str, Callable[[Context], Section]]] = [
    ("best", "Best trial", best),
    ("history", "Optimization history", history),
    ("importances", "Parameter importances", importances),
    ("parallel", "Parallel coordinates", parallel),
    ("slice", "Slice plots", slices),
    ("contour", "Contour plots", contour),
    ("pareto", "Pareto front", pareto),
    ("timeline", "Trials per worker", worker_timeline),
    ("utilisation", "Worker utilisation", worker_use),
]


def build_sections(study: optuna.Study, *, objective: int = 0,
                   trials: list[FrozenTrial] | None = None,
                   now: float | None = None) -> list[Section]:
    """Every section of the report; a section that fails carries a note, never an exception.

    The Pareto front is only a section of multi-objective studies."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    ctx = Context(study, trials, objective)
    if now is not None:
        ctx.now = now
    out = []
    for key, title, build in BUILDERS:
        if key == "pareto" and not ctx.multi:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(build(ctx))
        except Exception as exc:  # one broken plot must not cost the whole report
            out.append(Section(key, title, chart=key != "best",
                               note=f"This section could not be drawn: {_first_line(exc)}"))
    return out
