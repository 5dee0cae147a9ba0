"""Bad input to the CLI: one line on stderr and exit code 2, never a traceback.

These run the installed ``seal`` command in a subprocess, as a user would.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_DATA_DIR

SEAL = [sys.executable, "-m", "seal_cli.main"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEAL_DATA_DIR": str(TEST_DATA_DIR), "COLUMNS": "200"}
    return subprocess.run([*SEAL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def doc(tmp_path) -> Path:
    p = tmp_path / "doc.txt"
    p.write_text("The Zorblax Institute was founded in 1887.")
    return p


def assert_one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]


def test_missing_file(tmp_path):
    assert_one_line_error(run("adapt", str(tmp_path / "missing.txt"), cwd=tmp_path), "no such file")


def test_empty_document(tmp_path):
    (tmp_path / "e.txt").write_text("   \n")
    assert_one_line_error(run("adapt", str(tmp_path / "e.txt"), cwd=tmp_path), "empty")


def test_unknown_strategy(tmp_path, doc):
    assert_one_line_error(run("adapt", str(doc), "--strategy", "poetry", cwd=tmp_path), "unknown strategy 'poetry'")


def test_custom_template_needs_placeholders(tmp_path, doc):
    r = run("adapt", str(doc), "--strategy", "custom", "--template", "Summarise {title}", cwd=tmp_path)
    assert_one_line_error(r, "{context}")


def test_malformed_json(tmp_path):
    (tmp_path / "d.json").write_text("{oops")
    assert_one_line_error(run("adapt", str(tmp_path / "d.json"), cwd=tmp_path), "malformed JSON")


@pytest.mark.parametrize("rank", ["0", "-3"])
def test_rank_must_be_positive(tmp_path, doc, rank):
    assert_one_line_error(run("adapt", str(doc), "--rank", rank, cwd=tmp_path), "rank")


def test_eval_unknown_strategy_and_missing_data(tmp_path, squad_dev):
    assert_one_line_error(run("eval", "--data", str(squad_dev), "--strategies", "passage,nope", cwd=tmp_path), "nope")
    assert_one_line_error(run("eval", "--data", str(tmp_path / "x.json"), cwd=tmp_path), "no such file")


def test_ask_with_bad_adapter_dir(tmp_path):
    assert_one_line_error(run("ask", "Who?", "--adapter", str(tmp_path), cwd=tmp_path), "not a PEFT adapter")


def test_eval_data_without_questions(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"context": "x"}]))
    assert_one_line_error(run("eval", "--data", str(tmp_path / "d.json"), cwd=tmp_path), "no passages with questions")


def test_eval_bad_mode_and_mode_combinations(tmp_path, squad_dev):
    assert_one_line_error(run("eval", "--data", str(squad_dev), "--mode", "sideways", cwd=tmp_path), "unknown --mode")
    r = run("eval", "--data", str(squad_dev), "--mode", "continual", "--strategies", "passage,rewrite", cwd=tmp_path)
    assert_one_line_error(r, "exactly one strategy")
    r = run("eval", "--data", str(squad_dev), "--mode", "multi-document", "--resume", "--json", "o.json", cwd=tmp_path)
    assert_one_line_error(r, "--resume is for --mode single")
    assert_one_line_error(run("eval", "--data", str(squad_dev), "--policy", str(tmp_path), cwd=tmp_path),
                          "not a PEFT adapter")


def test_rl_bad_input(tmp_path, squad_dev):
    assert_one_line_error(run("rl", "--data", str(tmp_path / "x.json"), "--out", "o", cwd=tmp_path), "no such file")
    assert_one_line_error(run("rl", "--data", str(squad_dev), "--out", "o", "-N", "0", cwd=tmp_path), "samples")
    assert_one_line_error(run("rl", "--data", str(squad_dev), "--out", "o", "--strategy", "passage", cwd=tmp_path),
                          "self-edit strategy")
    assert_one_line_error(run("rl", "--data", str(squad_dev), "--out", "o", "--reward", "vibes", cwd=tmp_path),
                          "reward")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "config.json").write_text(json.dumps({"passages": 99}))
    assert_one_line_error(run("rl", "--data", str(squad_dev), "--out", "o", cwd=tmp_path), "different configuration")


# Runs `seal` as above and then says on stderr which model libraries the process imported.
IMPORTS_PROBE = ("import atexit, sys\n"
                 "atexit.register(lambda: print('imported:', *[m for m in ('torch', 'transformers', 'peft')"
                 " if m in sys.modules], file=sys.stderr))\n"
                 "from seal_cli.main import main\n"
                 "main()\n")


def test_bad_input_is_refused_before_the_model_libraries_load(tmp_path, doc, squad_dev):
    """Importing torch takes seconds on 2 cores: input the CLI can check on its own fails without it."""
    (tmp_path / "d.json").write_text(json.dumps([{"context": "x"}]))
    cases = [(("adapt", str(tmp_path / "missing.txt")), "no such file"),
             (("adapt", str(doc), "--strategy", "poetry"), "unknown strategy"),
             (("eval", "--data", str(squad_dev), "--mode", "sideways"), "unknown --mode"),
             (("eval", "--data", str(tmp_path / "d.json")), "no passages with questions"),
             (("rl", "--data", str(squad_dev), "--out", "o", "--strategy", "passage"), "self-edit strategy")]
    env = {**os.environ, "SEAL_DATA_DIR": str(TEST_DATA_DIR), "COLUMNS": "200"}
    for args, needle in cases:
        r = subprocess.run([sys.executable, "-c", IMPORTS_PROBE, *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
        *error, imported = r.stderr.strip().splitlines()
        assert imported == "imported:", (args, imported)
        assert_one_line_error(subprocess.CompletedProcess(r.args, r.returncode, r.stdout, "\n".join(error)), needle)


def test_rl_on_tasks_takes_the_fewshot_settings_from_the_environment(tmp_path):
    # The run's configuration is written before the model loads; a missing model then stops it.
    env = {**os.environ, "SEAL_DATA_DIR": str(TEST_DATA_DIR), "SEAL_FEWSHOT__MAX_EXAMPLES": "5",
           "SEAL_FEWSHOT__MAX_EPOCHS": "3", "SEAL_MODEL_PATH": str(tmp_path / "no-model")}
    r = subprocess.run([*SEAL, "rl", "--task", "text", "--data", "builtin:text-suite:1", "--out", "o"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    fewshot = json.loads((tmp_path / "o" / "config.json").read_text())["fewshot"]
    assert (fewshot["max_examples"], fewshot["max_epochs"]) == (5, 3)
