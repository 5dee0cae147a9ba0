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

    from seal_engine.knowledge.documents import DocumentError
    from seal_engine.core.grading import JudgeError
    from seal_engine.core.lora import AdapterError
    from seal_engine.core.model import ModelNotFoundError
    from seal_engine.knowledge.prompts import UnknownStrategyError

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
    from seal_engine.config import EngineSettings, LoraSettings

    base = EngineSettings()
    lora = {k[5:]: v for k, v in overrides.items() if k.startswith("lora_") and v is not None}
    rest = {k: v for k, v in overrides.items() if not k.startswith("lora_") and v is not None}
    merged = base.model_dump()
    merged.update(rest)
    merged["lora"] = LoraSettings(**{**base.lora.model_dump(), **lora}).model_dump()
    return EngineSettings.model_validate(merged)


def _load(settings):
    from seal_engine.core.model import get_model

    with console.status(f"loading {settings.model_id}"):
        return get_model(settings)


def _judge(settings, use_judge: bool):
    if not use_judge:
        return None
    from seal_engine.core.grading import LLMJudge

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

    from seal_engine.knowledge.adapt import adapt as run_adapt
    from seal_engine.knowledge.adapt import save_result
    from seal_engine.knowledge.documents import load_documents
    from seal_engine.knowledge.prompts import get_strategy

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
    from seal_engine.core.lora import load_adapter
    from seal_engine.knowledge.qa import answer_questions

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
    policy: Annotated[Optional[Path], typer.Option(help="a self-edit policy adapter (from `seal rl`) writes the self-edits")] = None,
    mode: Annotated[str, typer.Option(help="single (one adapter per passage), multi-document (one adapter for all "
                                           "passages) or continual (passages one after another, merged)")] = "single",
) -> None:
    """The knowledge-incorporation benchmark: accuracy per arm, reward, retention, time."""
    _quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from seal_engine.knowledge.documents import load_documents
    from seal_engine.knowledge.benchmark import run_knowledge_eval, select_passages
    from seal_engine.knowledge.prompts import get_strategy

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
        if mode not in EVAL_MODES:
            raise ValueError(f"unknown --mode {mode!r}; choose one of {', '.join(EVAL_MODES)}")
        if mode != "single" and resume:
            raise ValueError("--resume is for --mode single")
        if mode == "continual" and (len(arms) != 1 or judge):
            raise ValueError("--mode continual takes exactly one strategy and the offline graders")
        docs = select_passages(load_documents(data), passages, None if shuffle_seed < 0 else shuffle_seed)
        if not docs:
            raise ValueError(f"{data}: no passages with questions")
        lora_policy = _policy(policy)
        settings = _settings(lora_rank=rank, lora_epochs=epochs, lora_learning_rate=lr, lora_seed=seed)
        grader = _judge(settings, judge)
        bundle = _load(settings)
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


EVAL_MODES = ("single", "multi-document", "continual")


def _policy(path: Path | None):  # noqa: ANN202
    if path is None:
        return None
    from seal_engine.core.lora import load_adapter

    return load_adapter(path)


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
            table.add_row(arm, *(_pct(acc.get(g)) for g in ("exact_match", "f1", "contains", "judge")),
                          f"{rew['reward']:.3f}" if rew else "-",
                          _pct(rew.get("retention", c.get("retention"))), str(c.get("num_sequences", "-")))
    else:
        table = Table(title=f"continual ({results['strategy']}, {results['grader']}): accuracy on document i after step j")
        table.add_column("after step")
        for i in range(len(results["titles"])):
            table.add_column(f"doc {i}", justify="right")
        table.add_column("retention", justify="right")
        for j, (row, ret) in enumerate(zip(results["matrix"], results["retention"])):
            table.add_row("before" if j == 0 else str(j - 1), *(_pct(x) for x in row), _pct(ret))
    out.print(table)
    if mode == "continual":
        out.print(json.dumps(results["summary"], indent=1))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=1))
        out.print(f"results written to {json_out}")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary_table(summary: dict) -> Table:
    table = Table(title=f"knowledge incorporation, {summary['passages']} passages, {summary['seconds_per_passage']:.1f} s/passage")
    for col in ("arm", "exact match", "F1", "contains", "judge", "reward", "retention"):
        table.add_column(col, justify="left" if col == "arm" else "right")

    for arm, s in summary["arms"].items():
        table.add_row(
            arm, _pct(s.get("exact_match")), _pct(s.get("f1")), _pct(s.get("contains")), _pct(s.get("judge")),
            "-" if "reward" not in s else f"{s['reward']:.3f}", _pct(s.get("retention")),
        )
    return table


@app.command()
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
    epochs: Epochs = None,
    sft_epochs: Annotated[Optional[int], typer.Option(help="policy fine-tuning epochs")] = None,
    sft_lr: Annotated[Optional[float], typer.Option(help="policy fine-tuning learning rate")] = None,
    policy: Annotated[Optional[Path], typer.Option(help="start from this policy adapter instead of the base model")] = None,
    dev: Annotated[Optional[Path], typer.Option(help="after training, compare the policies on these passages")] = None,
    dev_passages: Annotated[int, typer.Option(help="how many --dev passages")] = 50,
    seed: Seed = None,
) -> None:
    """Train the self-edit policy with ReST-EM (the small preset: one iteration < 1 h on 2 cores)."""
    _quiet_libraries()
    from seal_engine.knowledge.documents import load_documents
    from seal_engine.rl.loop import RLConfig
    from seal_engine.rl.local import compare_policies, prepare_run_dir, run_rl
    from seal_engine.rl.local import dev_passages as pick_dev
    from seal_engine.config import SFTSettings

    with user_errors():
        if task == "knowledge":
            pool = load_documents(data)
            if not any(d.questions for d in pool):
                raise ValueError(f"{data}: no passages with questions")
        else:
            from seal_engine.fewshot.datasets import gradable, load_task_dataset

            pool = load_task_dataset(task, str(data))
            if not any(gradable(t) for t in pool):
                raise ValueError(f"{data}: no task has held-out outputs to reward recipes with")
            if dev:
                raise ValueError("--dev compares knowledge policies; for tasks run bench/fewshot.py --policy")
        over: dict = {"iterations": iterations, "strategy": strategy, "keep_margin": keep_margin, "task": task}
        over.update({k: v for k, v in {"passages": passages, "samples": samples, "repeats": repeats, "seed": seed}.items()
                     if v is not None})
        base = RLConfig.small()
        if epochs is not None:
            over["lora"] = base.lora.model_copy(update={"epochs": epochs})
        sft = {k: v for k, v in {"epochs": sft_epochs, "learning_rate": sft_lr}.items() if v is not None}
        if sft:
            over["sft"] = SFTSettings(**{**base.sft.model_dump(), **sft})
        settings = _settings()
        if task != "knowledge":  # test-time training and recipe settings: SEAL_FEWSHOT__*, as for task jobs
            over["fewshot"] = settings.fewshot
        config = RLConfig.small(**over)
        init = _policy(policy)
        dev_docs = pick_dev(load_documents(dev), config, dev_passages) if dev else []
        prepare_run_dir(out_dir, config)
        bundle = _load(settings)
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
            t.add_row(arm, _pct(s[d["grader"]]), f"{s['reward']:.3f}" if "reward" in s else "-", _pct(s.get("retention")))
        out.print(t)
    out.print(f"policies and metrics in {out_dir}; the last policy: "
              f"{out_dir / f'iter{config.iterations - 1}' / 'policy'}")


probes_app = typer.Typer(help="The retention probe set.", no_args_is_help=True)
app.add_typer(probes_app, name="probes")


@probes_app.command("build")
def probes_build(
    out_path: Annotated[Optional[Path], typer.Option("--out", help="default: the cache under the data dir")] = None,
) -> None:
    """Filter the raw probe facts to those the configured base model answers correctly."""
    _quiet_libraries()
    from seal_engine.knowledge.retention import build_probe_set, raw_probes, save_probe_set

    with user_errors():
        settings = _settings()
        bundle = _load(settings)
        probes = build_probe_set(bundle, settings)
        path = out_path or settings.data_dir / "probes" / f"probes_{bundle.model_id}.json"
        save_probe_set(probes, path)
    out.print(f"{len(probes)} of {len(raw_probes())} probes kept -> {path}")


from seal_cli.commands.service import register as _register_service_commands  # noqa: E402

_register_service_commands(app)


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
