"""Text tasks: a few input/output string pairs of one rule, and a seeded suite of them.

The suite spans graded difficulty for the default 135M model: constant-format
rules (a fixed made-up suffix, brackets) that a few LoRA steps pick up, made-up
labels for known categories, and rules that need reasoning over the whole string
(reversing characters, arithmetic) that a model this size rarely learns from a
handful of examples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from seal_engine.fewshot.arc import TaskError


@dataclass(frozen=True)
class TextPair:
    input: str
    output: str


@dataclass(frozen=True)
class TextTask:
    name: str
    train: tuple[TextPair, ...]
    test: tuple[TextPair, ...] = ()  # held-out pairs (inputs to answer, outputs to grade)
    difficulty: int = 0  # 1 easy .. 3 hard; 0 unknown (user tasks)
    # True when rewording an input cannot change its output (classification, extraction).
    paraphrase_safe: bool = False

    @property
    def kind(self) -> str:
        return "text"


def text_task(name: str, pairs: Sequence[dict | Sequence[str]], test: Sequence[dict | Sequence[str]] = ()) -> TextTask:
    """A task from ``[{"input": ..., "output": ...}]`` (or 2-item lists); TaskError if malformed."""

    def one(p: dict | Sequence[str], i: int) -> TextPair:
        try:
            inp, out = (p["input"], p["output"]) if isinstance(p, dict) else p
        except (KeyError, ValueError, TypeError):
            raise TaskError(f"pair {i}: needs an input and an output") from None
        if not isinstance(inp, str) or not isinstance(out, str) or not inp.strip() or not out.strip():
            raise TaskError(f"pair {i}: input and output must be non-empty strings")
        return TextPair(inp.strip(), out.strip())

    train = tuple(one(p, i) for i, p in enumerate(pairs))
    if len(train) < 2:
        raise TaskError("a task needs at least 2 examples")
    return TextTask(name, train, tuple(one(p, i) for i, p in enumerate(test)))


# --- example text --------------------------------------------------------------------

NOUNS = ["apple", "river", "candle", "garden", "pencil", "window", "rocket", "basket", "island", "ladder",
         "mirror", "violin", "blanket", "harbor", "lantern", "meadow", "needle", "orchard", "pebble", "saddle"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"]
ADJ = ["quiet", "bright", "heavy", "small", "ancient", "rapid", "gentle", "hollow", "shiny", "narrow"]
FIRST = ["Alice", "Bruno", "Chiara", "Daniel", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena"]
LAST = ["Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Sato", "Tanaka", "Urban", "Vargas", "Weber"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
CATEGORIES = {
    "animal": ["dog", "horse", "tiger", "rabbit", "eagle", "whale", "monkey", "snake", "sheep", "fox", "owl", "camel"],
    "fruit": ["banana", "cherry", "mango", "grape", "lemon", "peach", "plum", "melon", "pear", "kiwi", "apricot", "lime"],
    "vehicle": ["truck", "bicycle", "train", "bus", "scooter", "tram", "van", "ship", "canoe", "taxi", "tractor", "jeep"],
}
POSITIVE = ["I loved the {n}", "what a wonderful {n}", "the {n} was great", "this {n} makes me happy",
            "an excellent {n}", "the {n} is delightful"]
NEGATIVE = ["I hated the {n}", "what an awful {n}", "the {n} was terrible", "this {n} makes me sad",
            "a dreadful {n}", "the {n} is disappointing"]


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.sample(NOUNS + COLORS + ADJ, rng.randint(lo, hi)))


def _date(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)


# --- the generators: rng -> one (input, output) pair ---------------------------------

Gen = Callable[[random.Random], tuple[str, str]]


def _label_gen(labels: dict[str, str]) -> Gen:
    def gen(rng: random.Random) -> tuple[str, str]:
        cat = rng.choice(sorted(labels))
        return rng.choice(CATEGORIES[cat]), labels[cat]

    return gen


def _sentiment(rng: random.Random) -> tuple[str, str]:
    good = rng.random() < 0.5
    return rng.choice(POSITIVE if good else NEGATIVE).format(n=rng.choice(NOUNS)), "zorp" if good else "quib"


def _extract_number(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(2, 999)
    template = rng.choice(["I bought {k} {n}s today", "there were {k} {n}s on the table", "we counted {k} {n}s",
                           "about {k} {n}s arrived", "she packed {k} {n}s"])
    return template.format(k=n, n=rng.choice(NOUNS)), str(n)


def _kv_to_json(rng: random.Random) -> tuple[str, str]:
    name, age, color = rng.choice(FIRST), rng.randint(18, 90), rng.choice(COLORS)
    return f"name={name} age={age} color={color}", f'{{"name": "{name}", "age": {age}, "color": "{color}"}}'


def _snake_to_camel(rng: random.Random) -> tuple[str, str]:
    parts = rng.sample(NOUNS + ADJ, rng.randint(2, 3))
    return "_".join(parts), parts[0] + "".join(p.capitalize() for p in parts[1:])


def _parity(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(1, 99)
    return str(n), "tik" if n % 2 == 0 else "tok"


def _max_of_list(rng: random.Random) -> tuple[str, str]:
    xs = rng.sample(range(1, 60), rng.randint(3, 5))
    return ", ".join(map(str, xs)), str(max(xs))


def _iso_to_us(rng: random.Random) -> tuple[str, str]:
    y, m, d = _date(rng)
    return f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}"


def _iso_to_long(rng: random.Random) -> tuple[str, str]:
    y, m, d = _date(rng)
    return f"{y}-{m:02d}-{d:02d}", f"{d} {MONTHS[m - 1]} {y}"


def _rule(source: Callable[[random.Random], str], rule: Callable[[str], str]) -> Gen:
    """A generator drawing an input from ``source`` and mapping it by ``rule``."""

    def gen(rng: random.Random) -> tuple[str, str]:
        x = source(rng)
        return x, rule(x)

    return gen


def _word(rng: random.Random) -> str:
    return rng.choice(NOUNS + COLORS + ADJ)


def _phrase(lo: int, hi: int) -> Callable[[random.Random], str]:
    return lambda rng: _words(rng, lo, hi)


def _full_name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _swap_ends(s: str) -> str:
    w = s.split()
    return " ".join([w[-1], *w[1:-1], w[0]])


# (name, difficulty, paraphrase_safe, generator)
SUITE: list[tuple[str, int, bool, Gen]] = [
    ("suffix_zop", 1, False, _rule(_word, lambda s: f"{s}-zop")),
    ("brackets", 1, False, _rule(_phrase(1, 2), lambda s: f"[{s}]")),
    ("repeat_word", 1, False, _rule(_word, lambda s: f"{s} {s}")),
    ("prefix_label", 1, False, _rule(_word, lambda s: f"item: {s}")),
    ("uppercase", 1, False, _rule(_phrase(1, 3), str.upper)),
    ("first_word", 1, False, _rule(_phrase(2, 4), lambda s: s.split()[0])),
    ("last_word", 1, False, _rule(_phrase(2, 4), lambda s: s.split()[-1])),
    ("made_up_labels", 2, True, _label_gen({"animal": "blick", "fruit": "dax", "vehicle": "wug"})),
    ("sentiment_labels", 2, True, _sentiment),
    ("extract_number", 2, True, _extract_number),
    ("capitalize_words", 2, False, _rule(_phrase(2, 3), str.title)),
    ("swap_first_last", 2, False, _rule(_phrase(3, 4), _swap_ends)),
    ("name_last_first", 2, False, _rule(_full_name, lambda s: "{1}, {0}".format(*s.split()))),
    ("initials", 2, False, _rule(_full_name, lambda s: "".join(w[0] + "." for w in s.split()))),
    ("date_iso_to_us", 2, False, _iso_to_us),
    ("kv_to_json", 2, False, _kv_to_json),
    ("date_iso_to_long", 3, False, _iso_to_long),
    ("snake_to_camel", 3, False, _snake_to_camel),
    ("reverse_words", 3, False, _rule(_phrase(3, 4), lambda s: " ".join(s.split()[::-1]))),
    ("parity_labels", 3, True, _parity),
    ("max_of_list", 3, True, _max_of_list),
    ("reverse_chars", 3, False, _rule(_word, lambda s: s[::-1])),
    ("double_number", 3, True, _rule(lambda r: str(r.randint(2, 49)), lambda s: str(2 * int(s)))),
    ("count_words", 3, True, _rule(_phrase(1, 5), lambda s: str(len(s.split())))),
]
SUITE_NAMES = [name for name, *_ in SUITE]


def make_task(name: str, difficulty: int, safe: bool, gen: Gen, rng: random.Random,
              n_train: int, n_test: int) -> TextTask:
    """``n_train`` + ``n_test`` pairs with distinct inputs (no test input is a train input)."""
    pairs: list[TextPair] = []
    seen: set[str] = set()
    for _ in range(1000):
        inp, out = gen(rng)
        if inp not in seen:
            seen.add(inp)
            pairs.append(TextPair(inp, out))
        if len(pairs) == n_train + n_test:
            return TextTask(name, tuple(pairs[:n_train]), tuple(pairs[n_train:]), difficulty, safe)
    raise TaskError(f"{name}: cannot draw {n_train + n_test} distinct inputs")


@dataclass
class SuiteOptions:
    min_train: int = 3
    max_train: int = 8
    n_test: int = 10
    names: list[str] = field(default_factory=list)  # empty: every task


def text_task_suite(seed: int = 0, options: SuiteOptions | None = None) -> list[TextTask]:
    """The suite, the same for the same seed: 3-8 train pairs and 10 held-out pairs per task."""
    o = options or SuiteOptions()
    tasks = []
    for name, difficulty, safe, gen in SUITE:
        if o.names and name not in o.names:
            continue
        rng = random.Random(f"{seed}:{name}")  # str seeds are stable across processes
        n_train = rng.randint(o.min_train, o.max_train)
        tasks.append(make_task(name, difficulty, safe, gen, rng, n_train, o.n_test))
    return tasks


def task_text(task: TextTask) -> str:
    """The train pairs (for prompts); test inputs are not shown."""
    return "\n".join(pair_text(p) for p in task.train)


def pair_text(pair: TextPair) -> str:
    return f"Input: {pair.input}\nOutput: {pair.output}\n"


def query_text(demos: Sequence[TextPair], query_input: str) -> str:
    return "\n".join(pair_text(p) for p in demos) + f"\nInput: {query_input}\nOutput:"
