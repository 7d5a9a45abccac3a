"""Run a policy (or all of them) on a scenario: the static sweep, the oracle, scoring."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from qwen_operator import api
from qwen_tools.sim import oracle, policies
from qwen_tools.sim.cluster import COLD_STARTS, NODES, Cluster, Result, Settings
from qwen_tools.sim.gpus import GPU, model
from qwen_tools.sim.score import (
    Summary,
    TtftTarget,
    fixed_target,
    length_scaled_target,
    summarize,
    window_work,
    work_bound,
)
from qwen_tools.sim.trace import Trace

GOAL = 0.99
T = TypeVar("T")


def cheapest_meeting(items: Sequence[T], attainment: Callable[[T], float], cost: Callable[[T], float]) -> T:
    """The cheapest item whose SLO attainment meets ``GOAL``; when none does, the one that comes closest
    (the first of equals): how a static size, a tuned setting and a reference are chosen."""
    met = [i for i in items if attainment(i) >= GOAL]
    return min(met, key=cost) if met else max(items, key=attainment)


@dataclass(frozen=True)
class Scenario:
    name: str
    gpu: str = "a10g"
    trace: str = "conv"  # conv, code, conv-diurnal4, conv-diurnal10, conv-overlay2 (see bench.py)
    min_replicas: int = 1
    max_replicas: int = 5
    cold_start: str = "default"
    scrape_interval: int = 15
    router: str = "random"
    # "nominal", "pessimistic" (the slow end of every calibration band), or "drawn": each seed's card
    # drawn from the bands, unknown to the policies (they know the nominal card).
    calibration: str = "nominal"
    burn_in: float = 0.0  # seconds neither scored nor billed (judged on how a policy runs, not starts)
    nodes: bool = False  # pods may wait for a GPU node to be provisioned (cluster.Nodes)
    # The TTFT target: a flat 2 s, or "scaled" (2 s plus twice a prompt's unloaded prefill) where even
    # the largest fleet cannot serve long prompts' first tokens in 2 s.
    ttft: str = "fixed"
    clients: int = 0  # a closed loop of this many clients (cluster.Settings.clients); 0: open loop
    think: float = 10.0

    def target(self) -> TtftTarget:
        return length_scaled_target(self.model) if self.ttft == "scaled" else fixed_target()

    @property
    def model(self) -> GPU:
        """The card as the policies know it (a GPU table's figures)."""
        return model(self.gpu, "nominal" if self.calibration == "drawn" else self.calibration)

    def card(self, seed: int) -> GPU:
        """The card a run with this seed has."""
        return model(self.gpu, self.calibration, seed)

    def settings(self, seed: int, start_replicas: int) -> Settings:
        return Settings(
            self.card(seed),
            self.min_replicas,
            self.max_replicas,
            start_replicas,
            self.router,
            self.scrape_interval,
            COLD_STARTS[self.cold_start],
            seed=seed,
            score_from=self.burn_in,
            nodes=NODES if self.nodes else None,
            clients=self.clients,
            think=self.think,
        )


def start_replicas(trace: Trace, scenario: Scenario) -> int:
    """Where every dynamic policy starts, warm: what the first five minutes' work needs at the least,
    doubled for headroom (the trace is a slice of a service that was already running)."""
    work = window_work(trace, scenario.model)[:5]
    need = max(work) / 60 if work else 1.0
    return max(scenario.min_replicas, min(scenario.max_replicas, round(2 * need + 0.5)))


def run_policy(
    trace: Trace,
    scenario: Scenario,
    name: str,
    seed: int,
    spec: api.AutoscalingSpec | None = None,
    progress: Callable[[float], None] | None = None,
) -> Result:
    policy = policies.make(name, scenario.min_replicas, scenario.max_replicas, spec, scenario.model.product)
    start = policy.replicas if isinstance(policy, policies.Static) else start_replicas(trace, scenario)
    return Cluster(trace, policy, scenario.settings(seed, start)).run(progress)


@dataclass
class Outcome:
    """Everything one (scenario, seed) produced."""

    summaries: dict[str, Summary]
    best_static: int
    plan: list[int]
    work_bound_gpu_hours: float  # a true lower bound (score.work_bound)
    length_scaled: bool
    results: dict[str, Result]
    statics: dict[int, Summary]  # every static fleet size of the sweep


def target_for(statics_max: Result, scenario: Scenario) -> tuple[TtftTarget, bool]:
    """A flat 2 s TTFT target, unless even the largest static fleet cannot meet it (bursty traces)."""
    flat = fixed_target()
    if summarize(statics_max, flat).slo_attainment >= GOAL:
        return flat, False
    return length_scaled_target(scenario.model), True


def run_all(
    trace: Trace,
    scenario: Scenario,
    seed: int,
    names: Sequence[str] = policies.POLICIES,
    spec: api.AutoscalingSpec | None = None,
    length_scaled: bool | None = None,
    beyond_best: int | None = None,
) -> Outcome:
    """Every policy, the static sweep (best static N), the oracle, the reference and the work bound,
    for one seed. With ``beyond_best`` (and a known target), the sweep stops that many sizes past the
    smallest fleet that meets the SLO (the clairvoyant schedules rarely need more than one or two more
    replicas in a window than the whole run needs)."""
    sizes = range(scenario.min_replicas, scenario.max_replicas + 1)
    statics: dict[int, Result] = {}
    if length_scaled is None:
        statics[scenario.max_replicas] = run_policy(trace, scenario, f"static:{scenario.max_replicas}", seed)
        target, length_scaled = target_for(statics[scenario.max_replicas], scenario)
    else:
        target = length_scaled_target(scenario.model) if length_scaled else fixed_target()
    first_met: int | None = None
    for n in sizes:
        if beyond_best is not None and first_met is not None and n > first_met + beyond_best:
            break
        if n not in statics:
            statics[n] = run_policy(trace, scenario, f"static:{n}", seed)
        if first_met is None and summarize(statics[n], target).slo_attainment >= GOAL:
            first_met = n
    statics = dict(sorted(statics.items()))
    top = statics[max(statics)]
    results: dict[str, Result] = {}
    summaries: dict[str, Summary] = {}
    scored = {n: summarize(r, target) for n, r in statics.items()}
    best = cheapest_meeting(sorted(scored), lambda n: scored[n].slo_attainment, float)
    results["static-best"] = statics[best]
    summaries["static-best"] = replace(scored[best], policy=f"static-best ({best})")
    results["static-max"] = top
    summaries["static-max"] = replace(scored[max(statics)], policy=f"static-max ({max(statics)})")
    for name in names:
        results[name] = run_policy(trace, scenario, name, seed, spec)
        summaries[name] = summarize(results[name], target)
    windows = int(top.end // oracle.WINDOW) + 1
    lead = COLD_STARTS[scenario.cold_start].p95 + scenario.scrape_interval

    def simulate(per_window: list[int]) -> tuple[Summary, Result]:
        plan = oracle.schedule(per_window, lead)
        # Warm at the start, like every policy: what the plan needs before a launched pod can be ready.
        run = Cluster(trace, plan, scenario.settings(seed, plan.peak(0.0, lead))).run()
        return summarize(run, target), run

    # The cheapest plan whose simulation meets the SLO: per-window goals get stricter until it does
    # (a plan that meets 99% in every window can still miss overall through carried-over queues).
    oracle_run = _first_meeting(
        (oracle.plan(statics, target, windows, goal) for goal in oracle.WINDOW_GOALS), simulate
    )
    summaries["oracle"], results["oracle"], per_window = oracle_run
    allowed = (1 - GOAL) * len(top.scored)
    reference = _first_meeting(
        (oracle.budget_plan(statics, target, windows, share * allowed) for share in oracle.BUDGET_SHARES),
        simulate,
    )
    # The reference is the cheapest of the two schedules and the best static fleet that meets the SLO.
    yardsticks = [reference, oracle_run, (scored[best], statics[best], [best] * windows)]
    reference = cheapest_meeting(yardsticks, lambda c: c[0].slo_attainment, lambda c: c[0].gpu_hours)
    summaries["reference"] = replace(reference[0], policy="reference")
    results["reference"] = reference[1]
    bound = work_bound(trace, scenario.card(seed), scenario.burn_in, top.end, scenario.min_replicas)
    return Outcome(summaries, best, per_window, bound, length_scaled, results, scored)


def _first_meeting(
    plans: Iterable[list[int]], simulate: Callable[[list[int]], tuple[Summary, Result]]
) -> tuple[Summary, Result, list[int]]:
    """The first plan whose simulation meets the SLO, else the one with the highest attainment."""
    best: tuple[Summary, Result, list[int]] | None = None
    for per_window in plans:
        summary, result = simulate(per_window)
        if summary.slo_attainment >= GOAL:
            return summary, result, per_window
        if best is None or summary.slo_attainment > best[0].slo_attainment:
            best = (summary, result, per_window)
    assert best is not None
    return best
