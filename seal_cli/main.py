"""The ``seal`` command line. Heavy imports happen inside commands so ``--help`` is instant."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="seal: self-adapting language models.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
out = Console()

EXIT_BAD_INPUT = 2


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2: the contract for every bad input."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from seal_engine.documents import DocumentError
    from seal_engine.grading import JudgeError
    from seal_engine.lora import AdapterError
    from seal_engine.model import ModelNotFoundError
    from seal_engine.prompts import UnknownStrategyError

    return (DocumentError, UnknownStrategyError, AdapterError, ModelNotFoundError, JudgeError, ValidationError, ValueError)


def _one_line(e: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        parts = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        return "invalid settings: " + "; ".join(parts)
    return " ".join(str(e).split())


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except _user_errors() as e:
        fail(_one_line(e))


def _settings(**overrides: object):
    """Engine settings from the environment, with CLI flags layered on top."""
    from seal_engine.settings import EngineSettings, LoraSettings

    base = EngineSettings()
    lora = {k[5:]: v for k, v in overrides.items() if k.startswith("lora_") and v is not None}
    rest = {k: v for k, v in overrides.items() if not k.startswith("lora_") and v is not None}
    merged = base.model_dump()
    merged.update(rest)
    merged["lora"] = LoraSettings(**{**base.lora.model_dump(), **lora}).model_dump()
    return EngineSettings.model_validate(merged)


def _load(settings):
    from seal_engine.model import get_model

    with console.status(f"loading {settings.model_id}"):
        return get_model(settings)


def _judge(settings, use_judge: bool):
    if not use_judge:
        return None
    from seal_engine.grading import LLMJudge

    return LLMJudge(settings.judge)


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


Rank = Annotated[Optional[int], typer.Option("--rank", help="LoRA rank (default from settings)")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="inner-loop epochs")]
LR = Annotated[Optional[float], typer.Option("--lr", help="inner-loop learning rate")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="seed for sampling and LoRA init")]


@app.command()
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
    _quiet_libraries()
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from seal_engine.adaptation import adapt as run_adapt
    from seal_engine.adaptation import save_result
    from seal_engine.documents import load_documents
    from seal_engine.prompts import get_strategy

    with user_errors():
        docs = load_documents(document)
        get_strategy(strategy, template)
        settings = _settings(lora_rank=rank, lora_epochs=epochs, lora_learning_rate=lr, lora_seed=seed)
        grader = _judge(settings, judge)
        bundle = _load(settings)
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


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    adapter: Annotated[Optional[Path], typer.Option(help="a PEFT adapter directory")] = None,
    max_tokens: Annotated[int, typer.Option(help="new tokens at most")] = 64,
) -> None:
    """Answer a question closed-book, with or without an adapter."""
    _quiet_libraries()
    from seal_engine.lora import load_adapter
    from seal_engine.qa import answer_questions

    with user_errors():
        if not question.strip():
            raise ValueError("the question is empty")
        lora = load_adapter(adapter) if adapter is not None else None
        settings = _settings(answer_max_new_tokens=min(max_tokens, 64))
        bundle = _load(settings)
        answer = answer_questions(bundle, [question], settings, lora)[0]
    out.print(answer, highlight=False)


@app.command("eval")
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
) -> None:
    """The knowledge-incorporation benchmark: accuracy per arm, reward, retention, time."""
    _quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from seal_engine.documents import load_documents
    from seal_engine.knowledge_eval import run_knowledge_eval, select_passages
    from seal_engine.prompts import get_strategy

    with user_errors():
        arms = [s.strip() for s in strategies.split(",") if s.strip()]
        if not arms:
            raise ValueError("no strategies given")
        for a in arms:
            get_strategy(a)
        if passages < 0:
            raise ValueError("--passages must be >= 0")
        if resume and json_out is None:
            raise ValueError("--resume needs --json")
        docs = select_passages(load_documents(data), passages, None if shuffle_seed < 0 else shuffle_seed)
        if not docs:
            raise ValueError(f"{data}: no passages with questions")
        settings = _settings(lora_rank=rank, lora_epochs=epochs, lora_learning_rate=lr, lora_seed=seed)
        grader = _judge(settings, judge)
        bundle = _load(settings)
        with Progress(TextColumn("passages"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("passages", total=len(docs))
            results = run_knowledge_eval(
                bundle, docs, arms, settings, k=k, judge=grader, json_out=json_out, resume=resume,
                on_passage=lambda i, _row: bar.update(task, completed=i + 1),
            )
    out.print(summary_table(results["summary"]))
    if json_out:
        out.print(f"results written to {json_out}")


def summary_table(summary: dict) -> Table:
    table = Table(title=f"knowledge incorporation, {summary['passages']} passages, {summary['seconds_per_passage']:.1f} s/passage")
    for col in ("arm", "exact match", "F1", "contains", "judge", "reward", "retention"):
        table.add_column(col, justify="left" if col == "arm" else "right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    for arm, s in summary["arms"].items():
        table.add_row(
            arm, pct(s.get("exact_match")), pct(s.get("f1")), pct(s.get("contains")), pct(s.get("judge")),
            "-" if "reward" not in s else f"{s['reward']:.3f}", pct(s.get("retention")),
        )
    return table


probes_app = typer.Typer(help="The retention probe set.", no_args_is_help=True)
app.add_typer(probes_app, name="probes")


@probes_app.command("build")
def probes_build(
    out_path: Annotated[Optional[Path], typer.Option("--out", help="default: the cache under the data dir")] = None,
) -> None:
    """Filter the raw probe facts to those the configured base model answers correctly."""
    _quiet_libraries()
    from seal_engine.retention import build_probe_set, raw_probes, save_probe_set

    with user_errors():
        settings = _settings()
        bundle = _load(settings)
        probes = build_probe_set(bundle, settings)
        path = out_path or settings.data_dir / "probes" / f"probes_{bundle.model_id}.json"
        save_probe_set(probes, path)
    out.print(f"{len(probes)} of {len(raw_probes())} probes kept -> {path}")


from .service_commands import register as _register_service_commands  # noqa: E402

_register_service_commands(app)


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
