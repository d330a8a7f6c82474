"""report: the team report, one self-contained HTML page and its PNG charts (mlpipe/team/report.py).

Under a team (team=<name>, or `python -m mlpipe.team as <member> -- mlflow run . -e report`):
a leaderboard of every member's champion on the held-out team evaluation set with paired
intervals against the team champion, the champion's history and evidence, the A/B tests in the
serving records, and each member's step runs of the last `team.report.days` days."""

from mlpipe.data import sources
from mlpipe.loop import history as loop_history
from mlpipe.errors import ConfigError
from mlpipe.quality import assessment, compare
from mlpipe.reports import cards
from mlpipe.reports import team as tables
from mlpipe.team import report
from mlpipe.pipeline.harness import step_main
from mlpipe.run import outputs
from mlpipe.run.context import StepContext
from mlpipe.serving import abreport
from mlpipe.serving.records.db import display
from mlpipe.training.metric_names import greater_is_better

PAGE = f"{outputs.TEAM_REPORT_DIR}/index.html"


def run(ctx: StepContext) -> None:
    team, rcfg, dcfg = ctx.cfg.team, ctx.cfg.team.report, ctx.cfg.data
    if not team.name:
        raise ConfigError("the team report needs a team: team=<name> (conf/team/<name>.yaml), see docs/team.md")
    features, truth = report.holdout(dcfg)
    task = sources.infer_task(truth, dcfg.task, dcfg.max_classes)
    measure = assessment.primary_metric(ctx.cfg.qa, task)  # the leaderboard ranks by qa.primary_metric
    found = report.candidates(ctx.client, team, ctx.cfg.registry.champion_alias)
    report.score(ctx.client, found, features, measure, *ctx.trust, dcfg, ctx.cfg.trust, team, ctx.cfg.runtime)
    board = compare.leaderboard(found, truth, measure, rcfg.alpha, rcfg.bootstrap, ctx.cfg.seed).rows
    history = report.promotions(ctx.client, team.shared_model, ctx.cfg.registry.champion_alias)
    target = abreport.records_path(ctx.section("serve"), ctx.tracking_uri)
    tests = report.ab_tests(ctx.client, target, ctx.section("serve")["ab"], history, ctx.cfg.serve.records_timeout_s,
                            team.shared_model)
    runs = report.run_table([r for r in report.team_runs(ctx.client, team, rcfg.days) if r.info.run_id != ctx.run_id])
    watch = tables.monitoring_tables(runs)

    card, held = ctx.card, f"{len(truth)} held-out rows of {dcfg.source} (data.holdout_fraction={dcfg.holdout_fraction})"
    card.inputs.update({"team": team.name, "evaluation set": held, "records": display(target)})
    card.add_table(f"Leaderboard: {measure} on {held}, difference to the team champion with a "
                   f"{1 - rcfg.alpha:.0%} paired bootstrap interval",
                   ["model", "member", "version", measure, "difference", "CI low", "CI high", "note"],
                   [[r["label"], r["member"], r["version"], r.get(measure, float("nan")), r.get("delta", float("nan")),
                     r.get("ci_low", float("nan")), r.get("ci_high", float("nan")), r.get("error", "")] for r in board])
    charts = {"leaderboard.png": tables.leaderboard_chart(board, measure, rcfg.plot_dpi, greater_is_better(measure)),
              "durations.png": tables.duration_chart(runs, rcfg.plot_dpi)}
    card.add_image("leaderboard: difference to the team champion", charts["leaderboard.png"])
    holder = next((p for p in history if p["champion"]), None)
    card.add_table(f"Champion: {team.shared_model}@{ctx.cfg.registry.champion_alias} = "
                   + (f"version {holder['version']} ({holder['member'] or 'unknown member'})" if holder else "none yet")
                   + "; promotions, newest first",
                   ["version", "champion", "from", "member", "promoted by", "at", "A/B experiment", "test", "p",
                    "difference", "interval"], [list(p.values()) for p in history])
    card.add_table(f"A/B tests of {team.shared_model}", ["experiment", "arms", "control", "requests",
                                                         "labelled rows", "state"],
                   [list(t.values()) for t in tests])
    card.add_image("median step duration per member", charts["durations.png"])
    tables.add_monitoring(card, watch, rcfg.days)
    acted, quiet = loop_history.table(loop_history.monitor_runs(ctx.client, team.shared_model, report.experiments(ctx.client)))
    card.add_table(f"The closed loop on {team.shared_model}: monitor runs that acted, newest first ({quiet} more only "
                   "watched; docs/loop.md)", loop_history.HEADER, acted)
    ctx.log_json(f"{outputs.TEAM_REPORT_DIR}/leaderboard.json", board)
    for name, png in charts.items():
        (ctx.workdir / name).write_bytes(png)
    ctx.log_files([ctx.workdir / name for name in charts], outputs.TEAM_REPORT_DIR)
    page = cards.summary(card, run_id=ctx.run_id, experiment_id=ctx.run.info.experiment_id, status="FINISHED",
                         error=None, metrics={}) | {"step": f"team {team.name} report"}  # the page's title
    ctx.log_text(cards.render(page, card.sections), PAGE)
    ctx.set_tags({"report.page": PAGE, "report.champion": holder["version"] if holder else "none"})
    ctx.log_metrics({f"report.{r['label'].replace(' ', '_')}.{measure}": r[measure] for r in board if measure in r})
    ctx.summary(f"{len(board)} models on {len(truth)} held-out rows; {len(tests)} A/B tests; {len(runs)} runs; "
                f"page: {ctx.run.info.artifact_uri}/{PAGE}")


if __name__ == "__main__":
    step_main("report", run, cacheable=lambda cfg: False)
