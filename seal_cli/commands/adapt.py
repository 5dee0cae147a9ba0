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
    strategy: Annotated[Optional[str], typer.Option("--strategy", "-s", help="implications, implications-long, rewrite, self-qa, passage, custom; default: the recipe's (SEAL_RECIPE__STRATEGY)")] = None,
    template: Annotated[Optional[str], typer.Option(help="custom prompt with {title} and {context}")] = None,
    k: Annotated[Optional[int], typer.Option("-k", help="self-edits sampled per document; default: the recipe's")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where to write the adapter")] = Path("adapter"),
    rank: Rank = None,
    epochs: Epochs = None,
    lr: LR = None,
    seed: Seed = None,
    judge: Annotated[bool, typer.Option(help="also grade with the LLM judge (SEAL_JUDGE__*)")] = False,
    max_forgetting: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="refuse to save an adapter that forgets more than this share of the gate probes; "
        "default: the recipe's (SEAL_RECIPE__MAX_FORGETTING)")] = None,
    relevance: Annotated[Optional[bool], typer.Option(
        "--relevance/--no-relevance", help="served, the adapter answers only the requests about its documents (the "
        "base model the rest); default: the recipe's (SEAL_RECIPE__RELEVANCE)")] = None,
) -> None:
    """Teach the model a document: write self-edits, train a LoRA adapter on them, check what it forgot, save it."""
    from seal_engine.knowledge.documents import load_documents
    from seal_engine.knowledge.prompts import get_strategy

    with user_errors():
        # The input is checked before torch is imported (seconds), so bad input fails at once.
        docs = load_documents(document)
        settings = engine_settings(lora_rank=rank, lora_epochs=epochs, lora_learning_rate=lr, lora_seed=seed)
        recipe = settings.recipe
        if relevance is not None:
            recipe = recipe.model_copy(update={"relevance": relevance})
        strategy = strategy or ("custom" if template else recipe.strategy)
        get_strategy(strategy, template)
        bound = max_forgetting if max_forgetting is not None else recipe.max_forgetting
        grader = make_judge(settings, judge)
        quiet_libraries()
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        from seal_engine.knowledge.adapt import adapt as run_adapt
        from seal_engine.knowledge.adapt import save_result

        bundle = load_model(settings)
        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage.replace("_", " "), total=total)
                bar.update(tasks[stage], completed=done, total=total)

            result = run_adapt(bundle, docs, settings, strategy=strategy, template=template,
                               k=k if k is not None else recipe.num_self_edits, judge=grader, progress=progress,
                               measure_forgetting=True, max_forgetting=bound, **recipe.adapt_kwargs())
        path = save_result(result, out_dir)
    assert result.forgetting is not None
    out.print(f"adapter written to {path} ({len(result.sequences)} training sequences, {len(result.self_edits)} self-edits); "
              f"it forgets {result.forgetting.forgetting:.0%} of {result.forgetting.probes} general-knowledge probes")
    if result.adapter.relevance is not None:
        out.print(f"served, it answers the requests whose relevance gain is over {result.adapter.relevance.threshold:.2f} "
                  "nats; the base model answers the rest")
    if result.adapted is not None:
        out.print(json.dumps(result.metrics(), indent=1))


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    adapter: Annotated[Optional[Path], typer.Option(help="a PEFT adapter directory")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, max=2048, help="new tokens at most")] = 128,
) -> None:
    """Answer a question closed-book, with or without an adapter, as a chat user asks it
    (one plain user turn, greedy: what ``/v1/chat/completions`` gets)."""
    with user_errors():
        if not question.strip():
            raise ValueError("the question is empty")
        quiet_libraries()
        from seal_engine.core.lora import load_adapter
        from seal_engine.knowledge.qa import chat_answers

        lora = load_adapter(adapter) if adapter is not None else None
        bundle = load_model(engine_settings())
        answer = chat_answers(bundle, [question], [lora], max_tokens=max_tokens)[0]
    out.print(answer, highlight=False)
