"""A seeded generator of short arithmetic word problems with exact integer answers, and an
answer extractor for what a model writes (closed-loop accuracy, docs/end-to-end.md).

Two levels: `standard` problems take two or three operations on small integers (sums,
differences, products, an exact division); `easy` ones a single sum or difference of one-digit
numbers, after two worked examples, so that a small instruction model solves a measurable share
of them (the share SmolLM2-135M-Instruct solves is in docs/end-to-end.md). The answers are
unambiguous integers.
"""

import random
import re

NAMES = ["Tom", "Ana", "Ravi", "Mia", "Leo", "Sara", "Ken", "Lena", "Omar", "Ivy", "Ben", "Nora"]
ITEMS = ["apples", "pencils", "marbles", "stickers", "books", "cookies", "cards", "shells", "coins", "stamps"]
INSTRUCTION = "Solve the problem step by step, then give the final answer on its own line as 'Answer: <number>'."


class Problem:
    def __init__(self, index, text, answer, level="standard"):
        self.index = index
        self.text = text
        self.answer = answer
        self.level = level

    def prompt(self):
        if self.level == "easy":
            return f"{EASY_EXAMPLES}Now solve: {self.text}\n{EASY_INSTRUCTION}"
        return f"{self.text}\n{INSTRUCTION}"


def _one(rng):
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b, c = rng.randint(3, 40), rng.randint(2, 30), rng.randint(1, 20)
        return (f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to {other}. "
                f"How many {item} does {name} have now?", a + b - c)
    if kind == 1:
        boxes, per, extra = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 15)
        return (f"{name} has {boxes} boxes with {per} {item} in each box, and {extra} loose {item}. "
                f"How many {item} does {name} have in total?", boxes * per + extra)
    if kind == 2:
        friends, each = rng.randint(2, 8), rng.randint(2, 12)
        left = rng.randint(0, 9)
        total = friends * each + left
        return (f"{name} had {total} {item} and gave {each} to each of {friends} friends. "
                f"How many {item} are left?", left)
    if kind == 3:
        price, count, paid_extra = rng.randint(2, 15), rng.randint(2, 9), rng.randint(1, 20)
        paid = price * count + paid_extra
        return (f"One notebook costs {price} dollars. {name} buys {count} notebooks and pays with {paid} dollars. "
                f"How much change does {name} get?", paid_extra)
    if kind == 4:
        per_day, days, used = rng.randint(3, 12), rng.randint(2, 7), rng.randint(1, 10)
        return (f"{name} collects {per_day} {item} every day for {days} days, then loses {used} of them. "
                f"How many {item} does {name} have?", per_day * days - used)
    groups, size = rng.randint(2, 9), rng.randint(2, 9)
    total = groups * size
    more = rng.randint(1, 12)
    return (f"{name} shares {total} {item} equally among {groups} bags, then adds {more} {item} to one bag. "
            f"How many {item} are in that bag now?", size + more)


def _easy(rng):
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    b = rng.randint(1, 9)
    if rng.randrange(2) == 0:
        a = rng.randint(1, 9)
        return f"{name} has {a} {item}. A friend gives {name} {b} more {item}. How many {item} does {name} have now?", a + b
    a = b + rng.randint(1, 9)
    return f"{name} has {a} {item} and gives {b} of them away. How many {item} does {name} have left?", a - b


# Two worked examples before an easy problem: the format a small model copies.
EASY_EXAMPLES = ("Example: Sara has 5 pencils. A friend gives Sara 3 more pencils. How many pencils does Sara have now?\n"
                 "5 + 3 = 8\nAnswer: 8\n\n"
                 "Example: Leo has 9 cards and gives 4 of them away. How many cards does Leo have left?\n"
                 "9 - 4 = 5\nAnswer: 5\n\n")
EASY_INSTRUCTION = "Write the calculation, then 'Answer: <number>'."


LEVELS = {"standard": _one, "easy": _easy}


def generate(count, seed=0, level="standard"):
    """`count` distinct problems of `level` ("standard" or "easy"), the same for the same seed."""
    if level not in LEVELS:
        raise ValueError(f"unknown problem level {level!r}; choose from {', '.join(LEVELS)}")
    make = LEVELS[level]
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < count:
        text, answer = make(rng)
        if text in seen:
            continue
        seen.add(text)
        out.append(Problem(len(out), text, answer, level))
    return out


_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


def _parse(token):
    token = token.replace("$", "").replace(",", "")
    try:
        value = float(token)
    except ValueError:
        return None
    return int(value) if value == int(value) else value


def extract_answer(text):
    """The model's final answer: the number after the first 'Answer:' (or 'answer is'), else the
    last number in the text; None without a number."""
    cleaned = text.replace("*", "")
    for pattern in (r"[Aa]nswer\s*:\s*(" + _NUMBER + ")", r"answer is\s*(" + _NUMBER + ")"):
        match = re.search(pattern, cleaned)
        if match:
            return _parse(match.group(1))
    numbers = re.findall(_NUMBER, cleaned)
    return _parse(numbers[-1]) if numbers else None


_ANSWER_LINE = re.compile(r"[Aa]nswer\s*:\s*" + _NUMBER + r"[^\n]*\n")


def answer_given(text):
    """Whether `text` holds a finished 'Answer: <number>' line: where a generation may stop (a
    small model goes on to invent further examples)."""
    return _ANSWER_LINE.search(text.replace("*", "")) is not None
