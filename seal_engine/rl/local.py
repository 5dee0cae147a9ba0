"""ReST-EM in one process, resumable from a directory (the ``seal rl`` command and bench/rl.py).

Layout of ``out``::

    config.json                    the RLConfig (a rerun must use the same)
    iter<i>/passages.json          each evaluated passage, written as it finishes
    iter<i>/metrics.json           the iteration's metrics (written last: the iteration is done)
    iter<i>/policy/                the policy after iteration i (PEFT adapter), if anything was kept
    compare.json                   dev comparison of the policies, written per passage

Rerunning the same command continues where it stopped: finished iterations are
loaded, finished passages are not evaluated again.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from seal_engine.config import EngineSettings, LoraSettings
from seal_engine.core.lora import LoraAdapter, load_adapter
from seal_engine.core.model import ModelBundle
from seal_engine.errors import InputError
from seal_engine.knowledge.adapt import reward_for
from seal_engine.knowledge.documents import Document
from seal_engine.knowledge.evaluation import score_adapters
from seal_engine.knowledge.prompts import get_strategy
from seal_engine.knowledge.self_edits import training_sequences
from seal_engine.rl.config import RLConfig, candidate_seed
from seal_engine.rl.loop import passages_for_iteration, run_iteration, sample_iteration
from seal_engine.rl.results import PassageResult
from seal_engine.training.batched import train_adapters_batched

Log = Callable[[str], None]


def _without(obj: object, keys: frozenset[str]) -> object:
    if isinstance(obj, dict):
        return {k: _without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_without(v, keys) for v in obj]
    return obj


def run_identity(config: RLConfig | dict) -> dict | None:
    """What two runs must share to be the same run: the configuration (a stored one is
    re-validated, so settings added since it was written take their defaults), less the
    execution-only settings. None for a stored configuration this version cannot read."""
    try:
        cfg = config if isinstance(config, RLConfig) else RLConfig.model_validate(config)
    except ValueError:
        return None
    return _without(json.loads(cfg.model_dump_json()), LoraSettings.EXECUTION_ONLY)  # type: ignore[return-value]


def prepare_run_dir(out: Path, config: RLConfig) -> None:
    """Create ``out`` for ``config``, or check that it holds a run of the same configuration."""
    path = out / "config.json"
    if path.exists():
        if run_identity(json.loads(path.read_text())) != run_identity(config):
            raise InputError(f"{out} holds a run with a different configuration; use another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(config.model_dump_json(indent=1))


def run_rl(
    bundle: ModelBundle,
    pool: Sequence[Document],
    config: RLConfig,
    settings: EngineSettings,
    out: Path,
    *,
    init_policy: LoraAdapter | None = None,
    log: Log = lambda _m: None,
) -> tuple[list[dict], dict[str, LoraAdapter | None]]:
    """All iterations; returns the metrics per iteration and the policies by name
    (``base-policy``, ``iteration-1``, ...), each None where the base model writes."""
    prepare_run_dir(out, config)
    policy = init_policy
    policies: dict[str, LoraAdapter | None] = {"base-policy": init_policy}
    curve: list[dict] = []
    for it in range(config.iterations):
        d = out / f"iter{it}"
        d.mkdir(exist_ok=True)
        if (d / "metrics.json").exists():
            metrics = json.loads((d / "metrics.json").read_text())
            if (d / "policy").exists():
                policy = load_adapter(d / "policy")
        else:
            store = d / "passages.json"
            done = {p["passage"]: PassageResult.from_dict(p) for p in json.loads(store.read_text())} if store.exists() else {}

            def save(pr: PassageResult, done: dict = done, store: Path = store, it: int = it) -> None:
                done[pr.passage] = pr
                store.write_text(json.dumps([p.to_dict() for p in done.values()], indent=1))
                log(f"iteration {it} passage {pr.passage}: rewards {[round(s.reward, 3) for s in pr.samples]} "
                    f"(passage-only {pr.passage_reward:.3f}, {pr.seconds:.0f}s)")

            result = run_iteration(bundle, pool, config, settings, it, policy, done=done, on_passage=save)
            if result.policy is not None:
                result.policy.save(d / "policy")
                policy = result.policy
            metrics = result.metrics
            (d / "metrics.json").write_text(json.dumps(metrics, indent=1))
        curve.append(metrics)
        policies[f"iteration-{it + 1}"] = policy
        log(f"iteration {it}: mean reward {metrics['mean_reward']:.3f}, best-of-N {metrics['mean_best_of_n_reward']:.3f}, "
            f"kept {metrics['kept']}")
    return curve, policies


def compare_policies(
    bundle: ModelBundle,
    docs: Sequence[Document],
    policies: dict[str, LoraAdapter | None],
    config: RLConfig,
    settings: EngineSettings,
    *,
    json_out: Path | None = None,
    log: Log = lambda _m: None,
) -> dict:
    """Dev comparison with one inner-loop budget: no adaptation, passage only, and one
    self-edit per passage from each policy (same sampling seed for all).

    Per passage, the passage-only LoRA and every policy's LoRA train together and are
    graded in shared batches. Written to ``json_out`` after each passage; a rerun with
    the same policies and passages resumes.
    """
    settings = config.engine_settings(settings)
    grader = settings.reward_grader
    strat = get_strategy(config.strategy, config.template)
    names = list(policies)
    evalcfg = config.model_copy(update={"samples": 1, "repeats": 1})
    header = {"policies": names, "titles": [d.title for d in docs], "grader": grader,
              "config": json.loads(config.model_dump_json())}
    rows: list[dict] = []
    if json_out is not None and json_out.exists():
        previous = json.loads(json_out.read_text())
        prev = dict(previous.get("header") or {})
        same = run_identity(prev.pop("config", {})) == run_identity(config)
        if same and prev == json.loads(json.dumps({k: v for k, v in header.items() if k != "config"})):
            rows = previous["rows"]
    if len(rows) < len(docs):
        todo = docs[len(rows):]
        sampled = {name: sample_iteration(bundle, todo, evalcfg, 0, pol) for name, pol in policies.items()}
        for j, doc in enumerate(todo):
            i = len(rows)
            t0 = time.perf_counter()
            edits = {name: sampled[name][j][1][0] for name in names}
            sets = [training_sequences(doc, None, [])] + [training_sequences(doc, strat, [edits[n]]) for n in names]
            seed = candidate_seed(config, 0, i, 0, 0)
            adapters = train_adapters_batched(bundle, sets, config.lora, seeds=[seed] * len(sets))
            scores = score_adapters(bundle, list(doc.questions), [None, *adapters], settings)
            base_ret = scores[0].retention
            row = {"title": doc.title, "num_questions": len(doc.questions),
                   "no-adaptation": {"accuracy": scores[0].qa.accuracy, "retention": base_ret}}
            for name, score in zip(["passage-only", *names], scores[1:]):
                row[name] = {"accuracy": score.qa.accuracy,
                             "reward": reward_for(score.qa, score.retention, base_ret, settings).to_dict()}
                if name in edits:
                    row[name]["self_edit"] = edits[name]
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            if json_out is not None:
                json_out.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
            log(f"dev passage {i}: " + ", ".join(f"{n} {row[n]['accuracy'][grader]:.2f}"
                                                 for n in ["no-adaptation", "passage-only", *names]))
    arms = ["no-adaptation", "passage-only", *names]
    summary = {}
    for arm in arms:
        cells = [r[arm] for r in rows]
        summary[arm] = {g: statistics.fmean(c["accuracy"][g] for c in cells) for g in cells[0]["accuracy"]}
        if "reward" in cells[0]:
            summary[arm]["reward"] = statistics.fmean(c["reward"]["reward"] for c in cells)
            summary[arm]["retention"] = statistics.fmean(c["reward"]["retention"] for c in cells)
        else:
            summary[arm]["retention"] = statistics.fmean(c["retention"] for c in cells if c["retention"] is not None)
    return {"passages": len(rows), "grader": grader, "summary": summary,
            "seconds_per_passage": statistics.fmean(r["seconds"] for r in rows), "rows": rows}


def dev_passages(dev: Sequence[Document], config: RLConfig, n: int) -> list[Document]:
    """The same ``n`` dev passages for every comparison (seeded shuffle, question cap)."""
    return passages_for_iteration(dev, config.model_copy(update={"passages": n, "fresh_passages": False}), 0)
