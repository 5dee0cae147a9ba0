"""``seal adapt`` (teach the model a document) and ``seal ask`` (question it, with or without the adapter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from seal_cli.common import (
    LR,
    Epochs,
    Rank,
    Seed,
    console,
    engine_settings,
    load_model,
    make_judge,
    out,
    quiet_libraries,
)
from seal_cli.errors import user_errors


def adapt(
    document: Annotated[Path, typer.Argument(help="a .txt document, or JSON: {title?, text, questions?} or a list")],
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="implications, implications-long, rewrite, self-qa, passage, custom")] = "implications",
    template: Annotated[Optional[str], typer.Option(help="custom prompt with {title} and {context}")] = None,
    k: Annotated[int, typer.Option("-k", help="self-edits sampled per document")] = 5,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where to write the adapter")] = Path("adapter"),
    rank: Rank = None,
    epochs: Epochs = None,
    lr: LR = None,
    seed: Seed = None,
    judge: Annotated[bool, typer.Option(help="also grade with the LLM judge (SEAL_JUDGE__*)")] = False,
) -> None:
    """Teach the model a document: write self-edits, train a LoRA adapter on them, save it."""
    quiet_libraries()
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from seal_engine.knowledge.adapt import adapt as run_adapt
    from seal_engine.knowledge.adapt import save_result
    from seal_engine.knowledge.documents import load_documents
    from seal_engine.knowledge.prompts import get_strategy

    with user_errors():
        docs = load_documents(document)
        get_strategy(strategy, template)
        settings = engine_settings(lora_rank=rank, lora_epochs=epochs, lora_learning_rate=lr, lora_seed=seed)
        grader = make_judge(settings, judge)
        bundle = load_model(settings)
        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage.replace("_", " "), total=total)
                bar.update(tasks[stage], completed=done, total=total)

            result = run_adapt(bundle, docs, settings, strategy=strategy, template=template, k=k, judge=grader, progress=progress)
        path = save_result(result, out_dir)
    out.print(f"adapter written to {path} ({len(result.sequences)} training sequences, {len(result.self_edits)} self-edits)")
    if result.adapted is not None:
        out.print(json.dumps(result.metrics(), indent=1))


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    adapter: Annotated[Optional[Path], typer.Option(help="a PEFT adapter directory")] = None,
    max_tokens: Annotated[int, typer.Option(help="new tokens at most")] = 64,
) -> None:
    """Answer a question closed-book, with or without an adapter."""
    quiet_libraries()
    from seal_engine.core.lora import load_adapter
    from seal_engine.knowledge.qa import answer_questions

    with user_errors():
        if not question.strip():
            raise ValueError("the question is empty")
        lora = load_adapter(adapter) if adapter is not None else None
        settings = engine_settings(answer_max_new_tokens=min(max_tokens, 64))
        bundle = load_model(settings)
        answer = answer_questions(bundle, [question], settings, lora)[0]
    out.print(answer, highlight=False)
