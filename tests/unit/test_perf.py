"""The performance model's stages: the step-time fit and the queueing prediction."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from qwen_operator.perf import queueing, sizing
from qwen_operator.perf.predict import Mix
from qwen_operator.perf.queueing import POOLED, RANDOM, Load
from qwen_operator.perf.stepmodel import Fit, StepModel, Window
from qwen_operator.scaling.slo import rise_band
from qwen_operator.traffic import INF, EngineTotals, Histogram, Traffic
from qwen_tools.sim.engine import QUEUE_BUCKETS, TTFT_BUCKETS

TRUE = StepModel(floor_s=0.012, per_seq_s=0.0006, prefill_tok_s=6000.0, per_context_s=9.5e-8)
# The table's figures, 30% off in every parameter: what a user's published card might say.
TABLE = StepModel(floor_s=0.016, per_seq_s=0.0004, prefill_tok_s=8000.0, per_context_s=1.2e-7)


def window(
    model: StepModel, running: float, prefill_per_step: float, context: float, rng: random.Random
) -> Window:
    """What vLLM's exports would say of a minute at this batch, with the noise of sampled gauges."""
    step = model.step_seconds(running, prefill_per_step, context)
    steps = 60.0 / step
    decode = steps * running
    noisy = rng.gauss(1.0, 0.02)
    return Window(
        decode_tokens=decode,
        decode_seconds=decode * step * noisy,
        steps=steps,
        step_tokens=steps * (running + prefill_per_step),
        running=running,
        context_tokens=context,
    )


def varied_windows(model: StepModel, count: int, seed: int = 1) -> list[Window]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        running = rng.uniform(2, 60)
        out.append(window(model, running, rng.uniform(0, 800), running * rng.uniform(300, 3000), rng))
    return out


def test_the_fit_recovers_the_true_step_times_from_a_prior_30_percent_off() -> None:
    fit = Fit.start(TABLE)
    for w in varied_windows(TRUE, 200):
        fit = fit.update(w)
    assert fit.windows == 200
    for running, prefill, context in ((4, 0, 4000), (32, 256, 32000), (64, 1024, 100000)):
        truth = TRUE.step_seconds(running, prefill, context)
        assert fit.model.step_seconds(running, prefill, context) == pytest.approx(truth, rel=0.05)
        assert abs(TABLE.step_seconds(running, prefill, context) / truth - 1) > 0.1, "the prior was off"
    assert fit.model.prefill_tok_s == pytest.approx(6000, rel=0.1)
    assert max(fit.spread()) < max(Fit.start(TABLE).spread()), "it is surer than the prior"


def test_a_window_the_model_cannot_explain_is_rejected_and_a_run_of_them_restarts_from_the_prior() -> None:
    fit = Fit.start(TABLE)
    for w in varied_windows(TRUE, 100):
        fit = fit.update(w)
    learned = fit.theta
    rng = random.Random(5)
    # A restart's transient: steps five times slower for one window.
    slow = StepModel(TRUE.floor_s * 5, TRUE.per_seq_s * 5, TRUE.prefill_tok_s / 5, TRUE.per_context_s * 5)
    after = fit.update(window(slow, 30, 200, 30000, rng))
    assert after.theta == learned
    assert after.rejected == 1
    # The card changed for good: after a run of rejections the fit starts again, and learns it.
    for _ in range(10):
        after = after.update(window(slow, rng.uniform(2, 60), rng.uniform(0, 800), 20000, rng))
    for w in varied_windows(slow, 150, seed=9):
        after = after.update(w)
    assert after.model.step_seconds(32, 256, 32000) == pytest.approx(
        slow.step_seconds(32, 256, 32000), rel=0.1
    )


def test_windows_that_say_nothing_change_nothing() -> None:
    fit = Fit.start(TABLE)
    idle = Window(0, 0, 0, 0, 0, 0)
    broken = Window(100, math.nan, 10, 200, 5, 1000)
    assert fit.update(idle) == fit
    assert fit.update(broken) == fit


def test_kingman_is_exact_for_the_mm1_queue() -> None:
    load = Load(rate=0.8, prefill=1.0)  # M/M/1 at rho 0.8: P(W > t) = 0.8 exp(-0.2 t)
    for t in (0.0, 1.0, 5.0, 20.0):
        assert queueing.wait_beyond(load, 1, t) == pytest.approx(0.8 * math.exp(-0.2 * t))
    assert queueing.wait_quantile(load, 1, 0.01) == pytest.approx(math.log(80) / 0.2, rel=1e-6)


def test_erlang_c_and_the_pooled_tail() -> None:
    assert queueing.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert queueing.erlang_c(1, 0.5) == pytest.approx(0.5)
    assert queueing.erlang_c(3, 3.0) == 1.0
    # M/M/2 at 1 Erlang: P(W > t) = C exp(-(2 - 1) t / E[S]).
    load = Load(rate=1.0, prefill=1.0)
    assert queueing.wait_beyond(load, 2, 2.0, POOLED) == pytest.approx(math.exp(-2) / 3)


def test_decoding_slows_the_prefill_server() -> None:
    # Half of each replica's time decoding: the prefill server runs at half speed.
    load = Load(rate=2.0, prefill=0.1, decode=0.5)
    assert load.server(2) == pytest.approx((0.2, 0.2))
    assert load.server(1) is None, "1 replica: 2 x (0.1 + 0.5) s of work per second"
    assert queueing.wait_quantile(load, 1, 0.01) == math.inf


def test_pooling_and_smooth_arrivals_need_fewer_replicas_than_random_routing_of_bursts() -> None:
    load = Load(rate=20.0, prefill=0.15, decode=0.25)  # 8 replicas' worth of work
    random_n = queueing.fewest_replicas(load, 1.0, 0.01, 1, 40, RANDOM)
    pooled_n = queueing.fewest_replicas(load, 1.0, 0.01, 1, 40, POOLED)
    bursty_n = queueing.fewest_replicas(Load(20.0, 0.15, 0.25, ca2=13.0), 1.0, 0.01, 1, 40, RANDOM)
    assert random_n is not None
    assert pooled_n is not None
    assert bursty_n is not None
    assert 8 < pooled_n < random_n < bursty_n
    assert queueing.fewest_replicas(load, 1.0, 0.01, 1, 8) is None, "8 replicas run at 100%"
    # The correction factor scales the prediction: observed twice the predicted, more replicas.
    corrected = queueing.fewest_replicas(load, 1.0, 0.01, 1, 40, RANDOM, correction=2.0)
    assert corrected is not None
    assert corrected > random_n


def test_the_random_service_prediction_follows_the_simulated_fleet() -> None:
    """The queue-time p99 the model predicts at 3-6 replicas, from the measured load and the card's
    table, against what the simulator's engines (vLLM's scheduler) give on a real trace slice."""
    import statistics

    from qwen_tools.sim import policies, trace
    from qwen_tools.sim.cluster import Settings, simulate
    from qwen_tools.sim.gpus import GPUS
    from tests.conftest import DATA

    card = GPUS["a10g"]
    model = StepModel(card.floor_s, card.per_seq_s, card.prefill_tok_s, card.context_s_per_token)
    t = trace.load(DATA / "traces" / "conv-5min.csv")
    prompt, output = statistics.mean(t.prompts), statistics.mean(t.outputs)
    per_second = [0] * (int(t.duration) + 1)
    for at in t.arrivals:
        per_second[int(at)] += 1
    load = Load(
        rate=len(t) / t.duration,
        prefill=model.prefill_seconds(prompt),
        decode=model.decode_seconds(output, prompt + output / 2),
        ca2=statistics.pvariance(per_second) / statistics.mean(per_second),
        cs2=statistics.pvariance(t.prompts) / prompt**2,
    )
    for n in (3, 4, 5, 6):
        result = simulate(t, policies.Static(n), replace(Settings(card, 1, n, n), seed=1))
        waits = sorted(r.scheduled - r.arrival for r in result.requests if r.scheduled is not None)
        simulated = waits[int(0.99 * len(waits))]
        assert queueing.wait_quantile(load, n, 0.01) == pytest.approx(simulated, rel=0.25), n


def test_the_fit_learns_a_simulated_card_from_its_vllm_exports() -> None:
    """Per-minute windows of what a pod's /metrics would say (the engine's inter-token latency and
    iteration counters, its batch and KV usage sampled every 15 s) fit from the nominal A10G's table:
    the fit lands on the card the run drew, which is off the table."""

    from qwen_tools.sim import policies, trace
    from qwen_tools.sim.cluster import Cluster, Settings
    from qwen_tools.sim.gpus import GPUS, drawn
    from tests.conftest import DATA

    def table(card: object) -> StepModel:
        return StepModel(card.floor_s, card.per_seq_s, card.prefill_tok_s, card.context_s_per_token)  # type: ignore[attr-defined]

    nominal = GPUS["a10g"]
    card = drawn(nominal, 7)
    t = trace.load(DATA / "traces" / "conv-5min.csv").looped(3)
    cluster = Cluster(t, policies.Static(2), replace(Settings(card, 1, 2, 2), seed=1))
    fit = Fit.start(table(nominal))
    marks = {}
    samples: dict[str, list[tuple[float, float]]] = {}
    while not cluster.done:
        cluster.step()
        for pod in cluster.live:
            e = pod.engine
            if cluster.second % 15 == 0:
                samples.setdefault(pod.name, []).append((e.num_running, e.kv_usage * card.kv_tokens))
            if cluster.second % 60 == 0:
                now = e.vllm_totals().engine
                if pod.name in marks and samples.get(pod.name):
                    d = now.minus(marks[pod.name])
                    seen = samples.pop(pod.name)
                    fit = fit.update(
                        Window(
                            d.decode_tokens,
                            d.decode_seconds,
                            d.steps,
                            d.step_tokens,
                            sum(r for r, _ in seen) / len(seen),
                            sum(c for _, c in seen) / len(seen),
                        )
                    )
                marks[pod.name] = now
    assert fit.windows > 20
    truth, prior = table(card), table(nominal)
    # Where the pods ran (batches of 50-70, 45k-78k tokens of context): what the scaler predicts from.
    for running, prefill, context in ((64, 400, 76000), (55, 300, 60000)):
        actual = truth.step_seconds(running, prefill, context)
        table_error = abs(prior.step_seconds(running, prefill, context) / actual - 1)
        assert table_error > 0.09, "the table is off"
        assert abs(fit.model.step_seconds(running, prefill, context) / actual - 1) < table_error / 2


def test_the_most_rate_meets_the_bound_and_a_hair_more_does_not() -> None:
    from qwen_operator.perf import predict
    from qwen_operator.perf.predict import Mix

    mix = Mix(rate=1.0, prompt=1000, output=250)
    rate = predict.most_rate(TRUE, mix, 4, bound=2.0, share=0.01)
    assert rate > 0
    assert predict.ttft_quantile(TRUE, mix.at(rate), 4, 0.01) <= 2.0 + 1e-6
    assert predict.ttft_quantile(TRUE, mix.at(rate * 1.01), 4, 0.01) > 2.0
    # A looser bound, a faster card, more replicas: more requests.
    assert predict.most_rate(TRUE, mix, 4, 3.0, 0.01) > rate
    bursty = Mix(rate=1.0, prompt=1000, output=250, ca2=3.0)
    assert predict.most_rate(TRUE, bursty, 4, 2.0, 0.01) < rate, "bursts queue"
    assert predict.most_rate(TRUE, bursty, 8, 2.0, 0.01) > 2 * predict.most_rate(
        TRUE, bursty, 4, 2.0, 0.01
    ), "random splitting smooths the bursts each replica sees"
    assert predict.most_rate(TRUE, mix, 4, 2.0, 0.01, correction=2.0) < rate
    # Prompts whose own prefill takes most of the bound are judged on the wait, not on the first token.
    long = Mix(rate=1.0, prompt=17000, output=250)
    assert predict.budget(TRUE, long, 2.0) == ("wait", pytest.approx(0.5))
    assert predict.most_rate(TRUE, long, 4, 2.0, 0.01) > 0


# ------------------------------------------------------------------------------------------ sizing

A10G = sizing.prior(6000, 820)  # the operator's prior for the A10G, from its seed capacity
MIX = Mix(rate=6.0, prompt=1100, output=250, ca2=1.5)  # the Azure conversation trace's, about


def histogram(bounds: tuple[float, ...], within: Callable[[float], float], n: float) -> Histogram:
    """``n`` observations spread as ``within`` (the share at or below a bound) says, on vLLM's bounds."""
    return Histogram.of({**{le: n * within(le) for le in bounds}, INF: n})


def served(model: StepModel, mix: Mix, replicas: int, factor: float, n: float = 360) -> Traffic:
    """A minute as vLLM's histograms would show it if the replicas were ``factor`` times as full as
    the model says: queue times and first tokens from the model's own distributions at that load."""
    load = mix.at(factor * mix.rate).load(model)
    queue = histogram(QUEUE_BUCKETS, lambda t: 1 - queueing.wait_beyond(load, replicas, t), n)
    ttft = histogram(TTFT_BUCKETS, lambda t: 1 - queueing.first_token_beyond(load, replicas, t), n)
    return Traffic(60, mix.prompt * n, mix.output * n, n, ttft=ttft, queue_time=queue)


@pytest.mark.parametrize("planted", [0.7, 1.0, 1.6, 2.5])
def test_the_load_factor_is_learned_from_the_windows_queue_times_and_first_tokens(planted: float) -> None:
    """Replicas fuller (or emptier) than the model says, by a planted factor: the filter finds it
    within a step of its grid from what a minute of vLLM's histograms shows, on three fleet sizes."""
    learned = sizing.Sizing.start(A10G)
    for replicas in (3, 4, 5) * 4:
        traffic = served(A10G, MIX, replicas, planted)
        mix = sizing.mix_of(traffic, MIX.ca2)
        assert mix is not None
        learned = sizing.observe(learned, traffic, mix, replicas, running=0, bound=2.0)
    assert learned.correction == pytest.approx(planted, rel=0.1)
    assert learned.explains()


def test_slack_is_information_the_fleet_shrinks_to_what_the_model_predicts() -> None:
    """Six replicas where three keep the SLO, every first token well within it: the model learns from
    the windows that nothing is amiss, and sizes for three, saying what it predicts there; no miss is
    needed to go down, and it stops where the predicted misses would pass the SLO's 1%."""
    learned = sizing.Sizing.start(A10G)
    for _ in range(8):
        traffic = served(A10G, MIX, 6, 1.0)
        learned = sizing.observe(learned, traffic, MIX, 6, running=0, bound=2.0)
    found = sizing.fewest(learned, MIX, 0.01, 2.0, 1, 12)
    assert found is not None
    replicas, late = found.replicas, found.late
    assert replicas == 3
    assert late <= 0.01 < sizing.miss_share(A10G, MIX.at(learned.correction * MIX.rate), 2, 2.0)


def test_waits_the_model_cannot_explain_leave_the_decision_to_the_capacity() -> None:
    """A queue far longer than the model predicts even at four times its load (a card much slower
    than its table): the load factor sits at the edge of its grid, and the model does not decide."""
    learned = sizing.Sizing.start(A10G)
    for _ in range(8):
        traffic = served(sizing.prior(600, 82), MIX, 6, 1.0)  # a card ten times slower
        learned = sizing.observe(learned, traffic, MIX, 6, running=0, bound=2.0)
    assert learned.correction == sizing.GRID[-1]
    assert not learned.explains()


def test_the_rise_band_is_the_load_one_cold_start_ahead_of_most_minutes() -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 12, 7, tzinfo=UTC)

    def minutes(works: list[float]) -> list[tuple[datetime, float]]:
        return [(t0 + timedelta(minutes=i), w) for i, w in enumerate(works)]

    assert rise_band(minutes([1.0] * 30), 240) == 1.0, "flat: now's load is the forecast"
    assert rise_band(minutes([1.0] * 4), 240) == 1.0, "too little history to say"
    # A burst of 3x every ten minutes: within four minutes of most minutes the load triples.
    bursty = minutes([3.0 if i % 10 == 9 else 1.0 for i in range(30)])
    assert rise_band(bursty, 240) == pytest.approx(3.0)
    assert rise_band(bursty, 60) == 1.0, "one minute ahead, a burst is the rare case"
    assert rise_band(minutes([1.0 + 0.05 * i for i in range(30)]), 240) > 1.1, "a ramp rises"


def test_first_tokens_late_under_load_count_where_the_queue_times_do_not_show_it() -> None:
    """With chunked prefill a prompt also waits inside the batch, behind other prompts' chunks, which
    vLLM's queue time does not count: queue times as the model predicts, first tokens' tail as at
    twice the load. Under load the tail moves the factor up; at light load (a late first token is the
    prompt's own prefill) it does not."""

    def learn(replicas: int, ttft: Callable[[Traffic], Histogram]) -> float:
        learned = sizing.Sizing.start(A10G)
        for _ in range(8):
            early = served(A10G, MIX, replicas, 1.0)
            late = ttft(served(A10G, MIX, replicas, 2.0))
            traffic = Traffic(
                60, early.prompt_tokens, early.generation_tokens, early.requests, late, early.queue_time
            )
            learned = sizing.observe(learned, traffic, MIX, replicas, running=0, bound=2.0)
        return learned.correction

    assert learn(4, lambda late: late.ttft) > 1.3, "4 replicas at 6 requests/s: loaded"
    # 12 replicas: light load, where 5% of first tokens after 2.5 s are long prompts' own prefill.
    long_prompts = Histogram.of({0.5: 300, 1.0: 330, 2.5: 342, 5.0: 360, INF: 360})
    assert learn(12, lambda _: long_prompts) == pytest.approx(1.0, rel=0.1)


def test_the_kv_cache_a_smaller_fleet_would_hold_follows_the_simulated_fleet() -> None:
    """The KV cache grows faster than the load as a fleet shrinks: each replica serves more, and each
    request stays longer in a batch whose steps the extra work stretches. From six replicas' measured
    usage, the prediction at fewer against what the simulator's engines hold there (the card's true
    step model); from the fullest pod's usage, the fewest replicas whose fullest cache stays under a
    0.8 target: one fewer, and the simulated fleet preempts."""
    import statistics

    from qwen_tools.sim import policies, trace
    from qwen_tools.sim.cluster import Cluster, Settings
    from qwen_tools.sim.gpus import GPUS
    from tests.conftest import DATA

    card = GPUS["a10g"]
    model = StepModel(card.floor_s, card.per_seq_s, card.prefill_tok_s, card.context_s_per_token)
    t = trace.load(DATA / "traces" / "conv-5min.csv").looped(2)
    mix = Mix(len(t) / t.duration, statistics.mean(t.prompts), statistics.mean(t.outputs))

    def run(n: int) -> tuple[list[float], int]:
        """The pods' KV usage after the first minute, sampled every 5 s, and the fleet's preemptions."""
        cluster = Cluster(t, policies.Static(n), replace(Settings(card, 1, n, n), seed=1))
        usage = []
        while not cluster.done:
            cluster.step()
            if cluster.second >= 60 and cluster.second % 5 == 0 and cluster.second < t.duration:
                usage += [pod.engine.kv_usage for pod in cluster.live]
        return sorted(usage), sum(p.engine.preemptions for p in cluster.pods)

    six, _ = run(6)
    mean = sizing.Cache(statistics.mean(six), 6, mix.rate, 0.8)
    for n in (5, 4, 3):
        usage, preempted = run(n)
        assert mean.at(mix.load(model), mix.load(model), n) == pytest.approx(
            statistics.mean(usage), rel=0.15
        ), n
        assert preempted == 0
    assert mean.at(mix.load(model), mix.load(model), 3) > 1.2 * mean.peak * 6 / 3, (
        "more than the load's share"
    )
    fullest = replace(mean, peak=six[int(0.99 * len(six))])
    allowed = [n for n in range(1, 7) if fullest.at(mix.load(model), mix.load(model), n) <= fullest.target]
    assert min(allowed) == 3
    assert run(2)[1] > 0, "two replicas preempt"
    # The sizing skips what the cache would not hold, though the queueing alone would go lower.
    learned = sizing.Sizing.start(model)
    alone, limited = (
        sizing.fewest(learned, mix, 0.01, 2.0, 1, 12),
        sizing.fewest(learned, mix, 0.01, 2.0, 1, 12, cache=fullest),
    )
    assert alone is not None
    assert limited is not None
    assert (alone.replicas, alone.cache_limited) == (2, None)
    assert limited.replicas == 3
    assert limited.cache_limited == (2, pytest.approx(fullest.at(mix.load(model), mix.load(model), 2)))


def test_prompt_tokens_the_prefix_cache_holds_are_not_prefill_work() -> None:
    """Shared system prompts read from vLLM's prefix cache: the window's cache hits take their share
    of the prompt out of the prefill (not out of the context decoding reads), and the same load needs
    fewer replicas than if every prompt token were computed."""
    traffic = served(A10G, MIX, 4, 1.0)
    hits = replace(
        traffic, engine=EngineTotals(prefix_queries=MIX.prompt * 360, prefix_hits=MIX.prompt * 180)
    )
    plain, cached = sizing.mix_of(traffic, MIX.ca2), sizing.mix_of(hits, MIX.ca2)
    assert plain is not None
    assert cached is not None
    assert cached.cached == pytest.approx(0.5)
    assert cached.load(A10G).prefill == pytest.approx(plain.load(A10G).prefill / 2)
    assert cached.load(A10G).decode == pytest.approx(plain.load(A10G).decode)
    heavy = MIX.at(3 * MIX.rate)
    learned = sizing.Sizing.start(A10G)
    full = sizing.fewest(learned, heavy, 0.01, 2.0, 1, 32)
    half = sizing.fewest(learned, replace(heavy, cached=0.5), 0.01, 2.0, 1, 32)
    assert full is not None
    assert half is not None
    assert half.replicas < full.replicas
