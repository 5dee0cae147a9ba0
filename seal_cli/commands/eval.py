"""``seal eval``: the knowledge-incorporation benchmark (single, multi-document or continual) and its tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from seal_cli.common import (
    LR,
    Epochs,
    Rank,
    Seed,
    console,
    engine_settings,
    load_model,
    load_policy,
    make_judge,
    out,
    pct,
    quiet_libraries,
)
from seal_cli.errors import user_errors

EVAL_MODES = ("single", "multi-document", "continual")
EVAL_PATHS = ("benchmark", "chat")


def eval_(
    data: Annotated[Path, typer.Option(help="SQuAD-style JSON list of passages with questions")],
    passages: Annotated[int, typer.Option(help="how many passages (0 = all)")] = 50,
    strategies: Annotated[str, typer.Option(help="comma-separated arms")] = "passage,implications,rewrite,self-qa",
    k: Annotated[int, typer.Option("-k", help="self-edits per passage per arm")] = 1,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write full results here (updated per passage)")] = None,
    shuffle_seed: Annotated[int, typer.Option(help="seed of the passage shuffle; -1 keeps file order")] = 0,
    resume: Annotated[bool, typer.Option(help="keep the passages already in --json and continue")] = False,
    rank: Rank = None,
    epochs: Epochs = None,
    lr: LR = None,
    seed: Seed = None,
    judge: Annotated[bool, typer.Option(help="also grade with the LLM judge (SEAL_JUDGE__*)")] = False,
    policy: Annotated[Optional[Path], typer.Option(help="a self-edit policy adapter (from `seal rl`) writes the self-edits")] = None,
    mode: Annotated[str, typer.Option(help="single (one adapter per passage), multi-document (one adapter for all "
                                           "passages) or continual (passages one after another, merged)")] = "single",
    path: Annotated[str, typer.Option(help="benchmark: SEAL's answer prompt, 32 tokens, the old retention probes; "
                                           "chat: questions asked as /v1/chat/completions asks them, each arm trained "
                                           "with the server's recipe (SEAL_RECIPE__*), forgetting on the report probes")] = "benchmark",
    read_tokens: Annotated[int, typer.Option(min=1, max=1024, help="--path chat: reply length graded")] = 128,
) -> None:
    """The knowledge-incorporation benchmark: accuracy per arm, reward, retention, time."""
    from seal_engine.knowledge.documents import load_documents
    from seal_engine.knowledge.prompts import get_strategy

    with user_errors():
        # The flags and the data are checked before torch is imported (seconds), so bad input fails at once.
        arms = [s.strip() for s in strategies.split(",") if s.strip()]
        if not arms:
            raise ValueError("no strategies given")
        for a in arms:
            get_strategy(a)
        if passages < 0:
            raise ValueError("--passages must be >= 0")
        if resume and json_out is None:
            raise ValueError("--resume needs --json")
        if mode not in EVAL_MODES:
            raise ValueError(f"unknown --mode {mode!r}; choose one of {', '.join(EVAL_MODES)}")
        if mode != "single" and resume:
            raise ValueError("--resume is for --mode single")
        if path not in EVAL_PATHS:
            raise ValueError(f"unknown --path {path!r}; choose one of {', '.join(EVAL_PATHS)}")
        if path == "chat" and (mode != "single" or resume or judge or policy):
            raise ValueError("--path chat runs --mode single with the offline graders, without --resume or --policy")
        if mode == "continual" and (len(arms) != 1 or judge):
            raise ValueError("--mode continual takes exactly one strategy and the offline graders")
        pool = load_documents(data)
        if not any(d.questions for d in pool):
            raise ValueError(f"{data}: no passages with questions")
        settings = engine_settings(lora_rank=rank, lora_epochs=epochs, lora_learning_rate=lr, lora_seed=seed)
        grader = make_judge(settings, judge)
        quiet_libraries()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from seal_engine.knowledge.benchmark import run_knowledge_eval, select_passages

        docs = select_passages(pool, passages, None if shuffle_seed < 0 else shuffle_seed)
        lora_policy = load_policy(policy)
        bundle = load_model(settings)
        if path == "chat":
            _eval_chat_path(bundle, docs, arms, settings, k=k, read_tokens=read_tokens, json_out=json_out)
            return
        if mode != "single":
            _eval_other_mode(mode, bundle, docs, arms, settings, k=k, judge=grader, policy=lora_policy, json_out=json_out)
            return
        with Progress(TextColumn("passages"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("passages", total=len(docs))
            results = run_knowledge_eval(
                bundle, docs, arms, settings, k=k, judge=grader, json_out=json_out, resume=resume,
                on_passage=lambda i, _row: bar.update(task, completed=i + 1),
                policy=lora_policy, policy_name=str(policy) if policy else None,
            )
    out.print(summary_table(results["summary"]))
    if json_out:
        out.print(f"results written to {json_out}")


def _eval_chat_path(bundle, docs, arms, settings, *, k, read_tokens, json_out) -> None:  # noqa: ANN001
    """``seal eval --path chat``: seal_engine.knowledge.quality over the arms, one table, optional JSON."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from seal_engine.knowledge.forgetting import forgetting_check
    from seal_engine.knowledge.quality import evaluate_passage, markdown_table, summarize

    recipes = {arm: {"strategy": arm, "k": k, **settings.recipe.adapt_kwargs()} for arm in arms}
    check = forgetting_check(bundle, settings, "report", max_tokens=settings.forgetting_probe_tokens,
                             max_probes=settings.forgetting_probes, max_prompts=settings.forgetting_prompts)
    rows: list[dict] = []
    results: dict = {"path": "chat", "recipes": recipes, "read_tokens": read_tokens, "report_probes": len(check.probes),
                     "passages": rows}
    with Progress(TextColumn("passages"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("passages", total=len(docs))
        for i, doc in enumerate(docs):
            for row in evaluate_passage(bundle, settings, doc, recipes, check, read_tokens=read_tokens,
                                        seed=settings.lora.seed):
                rows.append({**row, "passage": i})
            results["summary"] = summarize(rows, arms)
            if json_out:
                json_out.parent.mkdir(parents=True, exist_ok=True)
                json_out.write_text(json.dumps(results, indent=1))
            bar.update(task, completed=i + 1)
    out.print(f"{len(docs)} passages, chat path, {len(check.probes)} report probes")
    out.print(markdown_table(results["summary"], 32, read_tokens), highlight=False)
    if json_out:
        out.print(f"results written to {json_out}")


def _eval_other_mode(mode: str, bundle, docs, arms, settings, *, k, judge, policy, json_out) -> None:  # noqa: ANN001
    """``seal eval --mode multi-document|continual``: one run, a table, optional JSON."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage.replace("_", " "), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        if mode == "multi-document":
            from seal_engine.knowledge.multi_document import run_multi_document_eval

            results = run_multi_document_eval(bundle, docs, arms, settings, k=k, policy=policy, judge=judge,
                                              progress=progress)
        else:
            from seal_engine.knowledge.continual import run_continual

            results = run_continual(bundle, docs, settings, strategy=arms[0], k=k,
                                    on_step=lambda j, _r: progress("documents", j + 1, len(docs)))
    if mode == "multi-document":
        table = Table(title=f"multi-document: {results['documents']} documents, {results['questions']} questions, "
                            f"{results['seconds']:.0f} s")
        for col in ("arm", "exact match", "F1", "contains", "judge", "reward", "retention", "sequences"):
            table.add_column(col, justify="left" if col == "arm" else "right")
        for arm, c in results["arms"].items():
            acc, rew = c["accuracy"], c.get("reward", {})
            table.add_row(arm, *(pct(acc.get(g)) for g in ("exact_match", "f1", "contains", "judge")),
                          f"{rew['reward']:.3f}" if rew else "-",
                          pct(rew.get("retention", c.get("retention"))), str(c.get("num_sequences", "-")))
    else:
        table = Table(title=f"continual ({results['strategy']}, {results['grader']}): accuracy on document i after step j")
        table.add_column("after step")
        for i in range(len(results["titles"])):
            table.add_column(f"doc {i}", justify="right")
        table.add_column("retention", justify="right")
        for j, (row, ret) in enumerate(zip(results["matrix"], results["retention"])):
            table.add_row("before" if j == 0 else str(j - 1), *(pct(x) for x in row), pct(ret))
    out.print(table)
    if mode == "continual":
        out.print(json.dumps(results["summary"], indent=1))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=1))
        out.print(f"results written to {json_out}")


def summary_table(summary: dict) -> Table:
    table = Table(title=f"knowledge incorporation, {summary['passages']} passages, {summary['seconds_per_passage']:.1f} s/passage")
    for col in ("arm", "exact match", "F1", "contains", "judge", "reward", "retention"):
        table.add_column(col, justify="left" if col == "arm" else "right")

    for arm, s in summary["arms"].items():
        table.add_row(
            arm, pct(s.get("exact_match")), pct(s.get("f1")), pct(s.get("contains")), pct(s.get("judge")),
            "-" if "reward" not in s else f"{s['reward']:.3f}", pct(s.get("retention")),
        )
    return table
