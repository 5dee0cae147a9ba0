"""``seal rl``: train the self-edit policy with ReST-EM on passages or few-shot tasks, locally."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from seal_cli.common import Epochs, Seed, console, engine_settings, load_model, load_policy, out, pct, quiet_libraries
from seal_cli.errors import user_errors


def rl(
    data: Annotated[str, typer.Option(help="training passages with questions (SQuAD-style JSON), or tasks")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory (rerun the same command to resume)")],
    iterations: Annotated[int, typer.Option(help="ReST-EM iterations")] = 2,
    passages: Annotated[Optional[int], typer.Option("--passages", "-P", help="passages per iteration")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", "-N", help="self-edits sampled per passage")] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", "-R", help="inner-loop seeds per self-edit")] = None,
    strategy: Annotated[str, typer.Option(help="the self-edit prompt the policy learns to answer")] = "implications",
    task: Annotated[str, typer.Option(help="knowledge (passages), or text / arc: few-shot tasks whose training "
                                           "recipes the policy learns to write (--data: a task file or "
                                           "builtin:text-suite)")] = "knowledge",
    keep_margin: Annotated[Optional[float], typer.Option(help="keep a best self-edit only if it beats passage-only by this")] = None,
    reward: Annotated[str, typer.Option(help="the learning term of a self-edit's reward: graded (closed-book accuracy) "
                                             "or likelihood (the gold answers' log-likelihood gain as chat replies, "
                                             "nats/token)")] = "graded",
    epochs: Epochs = None,
    retention_probes: Annotated[Optional[int], typer.Option(
        min=0, help="general-knowledge probes in each reward's retention term (default: the preset's)")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(
        min=1, help="longest self-edit the policy writes, in tokens (default: the preset's)")] = None,
    sft_epochs: Annotated[Optional[int], typer.Option(help="policy fine-tuning epochs")] = None,
    sft_lr: Annotated[Optional[float], typer.Option(help="policy fine-tuning learning rate")] = None,
    policy: Annotated[Optional[Path], typer.Option(help="start from this policy adapter instead of the base model")] = None,
    dev: Annotated[Optional[Path], typer.Option(help="after training, compare the policies on these passages")] = None,
    dev_passages: Annotated[int, typer.Option(help="how many --dev passages")] = 50,
    seed: Seed = None,
) -> None:
    """Train the self-edit policy with ReST-EM (the small preset: one iteration < 1 h on 2 cores)."""
    from seal_engine.config import SFTSettings
    from seal_engine.knowledge.documents import load_documents
    from seal_engine.rl.config import RLConfig

    with user_errors():
        # Knowledge runs: the data and the flags are checked before torch is imported (seconds).
        if task == "knowledge":
            pool = load_documents(data)
            if not any(d.questions for d in pool):
                raise ValueError(f"{data}: no passages with questions")
        else:
            quiet_libraries()
            from seal_engine.fewshot.datasets import gradable, load_task_dataset

            pool = load_task_dataset(task, str(data))
            if not any(gradable(t) for t in pool):
                raise ValueError(f"{data}: no task has held-out outputs to reward recipes with")
            if dev:
                raise ValueError("--dev compares knowledge policies; for tasks run bench/fewshot.py --policy")
        over: dict = {"iterations": iterations, "strategy": strategy, "keep_margin": keep_margin, "task": task,
                      "reward": reward}
        over.update({k: v for k, v in {"passages": passages, "samples": samples, "repeats": repeats, "seed": seed,
                                       "retention_probes": retention_probes}.items() if v is not None})
        base = RLConfig.small()
        if epochs is not None:
            over["lora"] = base.lora.model_copy(update={"epochs": epochs})
        if max_new_tokens is not None:
            over["sampling"] = base.sampling.model_copy(update={"max_new_tokens": max_new_tokens})
        sft = {k: v for k, v in {"epochs": sft_epochs, "learning_rate": sft_lr}.items() if v is not None}
        if sft:
            over["sft"] = SFTSettings(**{**base.sft.model_dump(), **sft})
        settings = engine_settings()
        if task != "knowledge":  # test-time training and recipe settings: SEAL_FEWSHOT__*, as for task jobs
            over["fewshot"] = settings.fewshot
        config = RLConfig.small(**over)
        quiet_libraries()
        from seal_engine.rl.local import compare_policies, prepare_run_dir, run_rl
        from seal_engine.rl.local import dev_passages as pick_dev

        init = load_policy(policy)
        dev_docs = pick_dev(load_documents(dev), config, dev_passages) if dev else []
        prepare_run_dir(out_dir, config)
        bundle = load_model(settings)
        curve, policies = run_rl(bundle, pool, config, settings, out_dir, init_policy=init,
                                 log=lambda m: console.print(m, highlight=False))
        summary: dict = {"config": json.loads(config.model_dump_json()), "curve": curve}
        if dev_docs:
            summary["dev"] = compare_policies(bundle, dev_docs, policies, config, settings,
                                              json_out=out_dir / "compare.json",
                                              log=lambda m: console.print(m, highlight=False))
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1))
    table = Table(title="reward per iteration")
    for col in ("iteration", "mean reward", "best-of-N reward", "passage-only reward", "kept"):
        table.add_column(col, justify="right")
    for m in curve:
        table.add_row(str(m["iteration"] + 1), f"{m['mean_reward']:.3f}", f"{m['mean_best_of_n_reward']:.3f}",
                      f"{m['passage_reward']:.3f}", str(m["kept"]))
    out.print(table)
    if "dev" in summary:
        d = summary["dev"]
        t = Table(title=f"dev comparison: {d['passages']} passages, grader {d['grader']}")
        for col in ("arm", "accuracy", "reward", "retention"):
            t.add_column(col, justify="left" if col == "arm" else "right")
        for arm, s in d["summary"].items():
            t.add_row(arm, pct(s[d["grader"]]), f"{s['reward']:.3f}" if "reward" in s else "-", pct(s.get("retention")))
        out.print(t)
    out.print(f"policies and metrics in {out_dir}; the last policy: "
              f"{out_dir / f'iter{config.iterations - 1}' / 'policy'}")
