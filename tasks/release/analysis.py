"""Canary analysis: one traffic step's window judged, green against blue, by the service's stated rules.

Per metric a row: blue's value, green's, the rule and a verdict (pass, fail,
inconclusive). Too few requests on either side (``min_requests``) leaves every
row inconclusive. The 5xx rate fails when green's exceeds blue's by more than
``error_rate.max_increase`` (absolute); a latency percentile fails when green's
is more than ``latency_pNN.max_ratio`` times blue's. With ``method:
mann-whitney`` a rule fails only when it is over its limit *and* the
difference is significant at ``alpha`` (scipy): a one-sided Fisher exact test
on the 5xx counts, a one-sided Mann-Whitney U test on the minute-by-minute
percentiles, where the window has enough minutes for the test to reach
``alpha`` at all (else the threshold alone decides, and the rule says so).

``judge`` is pure; ``publish`` makes the judgement a table artifact
(``<service>-analysis``) and an ``ecs-pipeline.deploy.analysis-<verdict>`` event;
``conclude`` publishes and acts (a fail is the VerifyFailed an alarm raises).
Two ways a step is judged: ``gate_step`` for steps the pipeline drives (task
sets: at the step's end, waiting for traffic while inconclusive) and
``ShiftAnalysis`` for steps AWS drives (CodeDeploy, ECS: as the shift goes,
a closed window decided at once).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from tasks.aws import metrics
from tasks.aws.clients import AwsClients
from tasks.aws.metrics import Pair, Side, Window
from tasks.config.models import Analysis, ServiceConfig
from tasks.core.errors import VerifyFailed
from tasks.core.report import artifact_key, emit

Verdict = Literal["pass", "fail", "inconclusive"]
TIMES = "\u00d7"  # the multiplication sign of "2.29x, limit 1.25x"
EVENTS = {"pass": "analysis-passed", "fail": "analysis-failed", "inconclusive": "analysis-inconclusive"}


@dataclass(frozen=True)
class Row:
    metric: str
    blue: str
    green: str
    rule: str
    verdict: Verdict
    reason: str = ""  # a failed or inconclusive row in words

    def as_table(self) -> dict[str, str]:
        return {"metric": self.metric, "blue": self.blue, "green": self.green, "rule": self.rule,
                "verdict": self.verdict}


@dataclass(frozen=True)
class Judgement:
    step: str
    rows: tuple[Row, ...]

    @property
    def verdict(self) -> Verdict:
        verdicts = {r.verdict for r in self.rows}
        return "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"

    @property
    def reason(self) -> str:
        """The failed rows' reasons ("p95 412 ms on green vs 180 ms on blue: 2.29x, limit 1.25x"), else the
        inconclusive ones', else ''."""
        return "; ".join(r.reason for r in self.rows if r.verdict == self.verdict and r.reason)

    def sentence(self) -> str:
        """"analysis of the 10% step passed: requests 480 vs 500, ..." (green's value first), or the reason."""
        if self.verdict == "pass":
            return f"analysis of {self.step} passed: " + ", ".join(f"{r.metric} {r.green} vs {r.blue}"
                                                                   for r in self.rows)
        return f"analysis of {self.step} {'failed' if self.verdict == 'fail' else 'inconclusive'}: {self.reason}"


def _rate(side: Side) -> float:
    return side.errors / side.requests if side.requests else 0.0


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def _ms(value: float | None) -> str:
    return "no data" if value is None else f"{value:.0f} ms"


def smallest_p(n_green: int, n_blue: int) -> float:
    """The smallest one-sided p-value an exact Mann-Whitney U test of these sample sizes can give (every green
    sample above every blue one): one arrangement of C(n+m, n)."""
    return 1.0 / math.comb(n_green + n_blue, n_green) if n_green and n_blue else 1.0


def _error_row(rules: Analysis, window: Window, counted: bool) -> Row | None:
    if rules.error_rate is None:
        return None
    limit = rules.error_rate.max_increase
    g, b = window.green, window.blue
    rule = f"green - blue ≤ +{limit * 100:.1f} points"
    if rules.method == "mann-whitney":
        rule += f", Fisher p < {rules.alpha:g}"
    blue, green = f"{_pct(_rate(b))} ({b.errors}/{b.requests})", f"{_pct(_rate(g))} ({g.errors}/{g.requests})"
    if not counted:
        return Row("5xx rate", blue, green, rule, "inconclusive")
    increase = _rate(g) - _rate(b)
    over = increase > limit + 1e-12
    detail = ""
    if over and rules.method == "mann-whitney":
        from scipy import stats  # at the first judgement: a release without analysis never pays its import

        table = [[g.errors, g.requests - g.errors], [b.errors, b.requests - b.errors]]
        p = float(stats.fisher_exact(table, alternative="greater").pvalue)
        detail = f" (Fisher exact p={p:.3g}, alpha {rules.alpha:g})"
        over = p < rules.alpha
    words = (f"5xx rate {_pct(_rate(g))} on green vs {_pct(_rate(b))} on blue: "
             f"{increase * 100:+.1f} points, limit +{limit * 100:.1f}{detail}")
    return Row("5xx rate", blue, green, rule, "fail" if over else "pass", words if over else "")


def _latency_row(rules: Analysis, window: Window, name: str, counted: bool) -> Row | None:
    rule_of = {"p50": rules.latency_p50, "p95": rules.latency_p95, "p99": rules.latency_p99}[name]
    if rule_of is None:
        return None
    limit = rule_of.max_ratio
    g, b = window.green.latency_ms.get(name), window.blue.latency_ms.get(name)
    gs, bs = window.green.samples_ms.get(name) or [], window.blue.samples_ms.get(name) or []
    rule = f"green / blue ≤ {limit:g}{TIMES}"
    tested = rules.method == "mann-whitney" and smallest_p(len(gs), len(bs)) < rules.alpha
    if rules.method == "mann-whitney":
        rule += (f", Mann-Whitney p < {rules.alpha:g}" if tested else
                 f" (threshold only: {len(gs)} vs {len(bs)} minutes are too few for Mann-Whitney at {rules.alpha:g})")
    if not counted or g is None or b is None:
        why = "" if not counted else f"{name} has no data on {'green' if g is None else 'blue'}"
        return Row(name, _ms(b), _ms(g), rule, "inconclusive", why)
    ratio = g / b if b > 0 else (math.inf if g > 0 else 1.0)
    over = ratio > limit + 1e-12
    detail = ""
    if over and tested:
        from scipy import stats  # at the first judgement: a release without analysis never pays its import

        p = float(stats.mannwhitneyu(gs, bs, alternative="greater").pvalue)
        detail = f" (Mann-Whitney p={p:.3g} over {len(gs)} vs {len(bs)} minutes, alpha {rules.alpha:g})"
        over = p < rules.alpha
    words = f"{name} {g:.0f} ms on green vs {b:.0f} ms on blue: {ratio:.2f}{TIMES}, limit {limit:g}{TIMES}{detail}"
    return Row(name, _ms(b), _ms(g), rule, "fail" if over else "pass", words if over else "")


def judge(rules: Analysis, window: Window, step: str) -> Judgement:
    """Green against blue over WINDOW by RULES; STEP names the step in words ("the 10% step")."""
    g, b = window.green, window.blue
    counted = g.requests >= rules.min_requests and b.requests >= rules.min_requests
    short = [f"{n} on {side}" for side, n in (("green", g.requests), ("blue", b.requests)) if n < rules.min_requests]
    rows: list[Row | None] = [Row("requests", str(b.requests), str(g.requests), f"≥ {rules.min_requests} each",
                "pass" if counted else "inconclusive",
                "" if counted else f"too few requests: {', '.join(short)} (at least {rules.min_requests} on each)")]
    rows.append(_error_row(rules, window, counted))
    rows.extend(_latency_row(rules, window, name, counted) for name in metrics.PERCENTILES)
    return Judgement(step, tuple(r for r in rows if r is not None))


def percentiles(rules: Analysis) -> list[str]:
    """The percentiles the rules judge (GetMetricData reads only those)."""
    named = {"p50": rules.latency_p50, "p95": rules.latency_p95, "p99": rules.latency_p99}
    return [p for p, rule in named.items() if rule is not None]


def read(cfg: ServiceConfig, clients: AwsClients, pair: Pair, start: datetime, end: datetime) -> Window:
    """The window's metrics as the service's rules need them (minute samples only for mann-whitney)."""
    rules = cfg.analysis
    assert rules is not None
    return metrics.read_window(clients.get("cloudwatch"), pair, start, end,
                               time_scale=clients.settings.effective_time_scale, percentiles=percentiles(rules),
                               samples=rules.method == "mann-whitney")


def publish(service: str, judgement: Judgement, *, sha: str | None = None, note: str = "") -> None:
    """The judgement as the run's ``<service>-analysis`` table artifact and an event."""
    table = [r.as_table() for r in judgement.rows]
    table.append({"metric": "verdict", "blue": "", "green": "", "rule": judgement.step,
                  "verdict": judgement.verdict + (f" ({note})" if note else "")})
    create_table_artifact(table=table, key=artifact_key(service, "analysis"),
                          description=judgement.sentence()[:500])
    emit(service, EVENTS[judgement.verdict], sha=sha, step=judgement.step, verdict=judgement.verdict,
         reason=judgement.reason or None, rows=[r.as_table() for r in judgement.rows], note=note or None)


def conclude(cfg: ServiceConfig, judgement: Judgement, *, after: str = "", sha: str | None = None,
             deployment_id: str | None = None) -> Judgement:
    """Publish the step's judgement and act on it: a fail (or an inconclusive window under ``on_inconclusive:
    fail``) is a VerifyFailed, the error alarms raise during a step, so the strategy's rollback runs.

    AFTER: what was done about too few requests ("after waiting 300 s for more traffic")."""
    rules = cfg.analysis
    assert rules is not None
    log = get_run_logger()
    note = ""
    if judgement.verdict == "inconclusive":
        note = f"{after + '; ' if after else ''}on_inconclusive: {rules.on_inconclusive}"
    publish(cfg.name, judgement, sha=sha, note=note)
    if judgement.verdict == "pass":
        log.info(judgement.sentence())
    elif judgement.verdict == "fail":
        raise VerifyFailed(f"analysis failed during {judgement.step}: {judgement.reason}", service=cfg.name,
                           deployment_id=deployment_id)
    elif rules.on_inconclusive == "fail":
        raise VerifyFailed(f"analysis inconclusive during {judgement.step} ({note}): {judgement.reason}",
                           service=cfg.name, deployment_id=deployment_id)
    else:
        log.warning("%s (%s): passed", judgement.sentence(), note)
    return judgement


def gate_step(cfg: ServiceConfig, clients: AwsClients, pair: Pair, step: str, started: datetime,
              watch_more: Callable[[float], None], *, sha: str | None = None) -> Judgement:
    """A step the pipeline drives, judged once its time is up: too few requests on either side and it waits
    for more (WATCH_MORE: go on watching the step that many AWS seconds), a minute at a time, at most
    ``inconclusive_wait_seconds``; then decides (``conclude``)."""
    rules = cfg.analysis
    assert rules is not None
    waited = 0
    while True:
        found = judge(rules, read(cfg, clients, pair, started, datetime.now(UTC)), step)
        if found.verdict != "inconclusive" or waited >= rules.inconclusive_wait_seconds:
            break
        if not waited:
            get_run_logger().warning("analysis inconclusive at the end of %s (%s): waiting up to %d s for more "
                                     "traffic", step, found.reason, rules.inconclusive_wait_seconds)
        more = min(metrics.MINUTE, rules.inconclusive_wait_seconds - waited)
        watch_more(more)
        waited += more
    after = f"after waiting {waited} s for more traffic" if waited else ""
    return conclude(cfg, found, after=after, sha=sha)


class ShiftAnalysis:
    """The steps of a shift AWS drives (CodeDeploy, ECS), judged as the strategy's looks see green's weight.

    A step is a window in which green's production weight stays strictly between 0 and 100 (blue still takes
    traffic). While it lasts it is judged at most once a (time-scaled) minute, and a fail ends it at once;
    when the weight moves on, the closed window is judged once more and decided. AWS does not wait for the
    pipeline, so a closed window with too few requests is decided at once by ``on_inconclusive``.
    """

    def __init__(self, cfg: ServiceConfig, clients: AwsClients, pair: Callable[[], Pair], *,
                 sha: str | None = None, deployment_id: str | None = None) -> None:
        self.cfg, self.clients, self._pair = cfg, clients, pair
        self.sha, self.deployment_id = sha, deployment_id
        self.window: tuple[int, datetime] | None = None
        self.next_look = 0.0
        self.pair: Pair | None = None
        self.judged: list[Judgement] = []

    def see(self, weight: int) -> None:
        if self.cfg.analysis is None:
            return
        if self.window is not None and weight != self.window[0]:
            self.close()
        if 0 < weight < 100 and self.window is None:
            self.pair = self.pair or self._pair()
            self.window = (weight, datetime.now(UTC))
            self.next_look = time.monotonic() + self.clients.settings.scaled(metrics.MINUTE)
        elif self.window is not None and time.monotonic() >= self.next_look:
            self.next_look = time.monotonic() + self.clients.settings.scaled(metrics.MINUTE)
            found = self._judge(datetime.now(UTC))
            if found.verdict == "fail":
                self.judged.append(conclude(self.cfg, found, sha=self.sha, deployment_id=self.deployment_id))

    def close(self) -> None:
        """The open step is over (the weight moved, or the shift ended): its window decided."""
        if self.window is None or self.cfg.analysis is None:
            return
        found = self._judge(datetime.now(UTC))
        self.window = None
        after = "AWS moved on without waiting" if found.verdict == "inconclusive" else ""
        self.judged.append(conclude(self.cfg, found, after=after, sha=self.sha, deployment_id=self.deployment_id))

    def _judge(self, end: datetime) -> Judgement:
        assert self.window is not None and self.pair is not None and self.cfg.analysis is not None
        weight, started = self.window
        return judge(self.cfg.analysis, read(self.cfg, self.clients, self.pair, started, end), f"the {weight}% step")
