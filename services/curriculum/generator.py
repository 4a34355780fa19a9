"""The built-in curriculum: prompts with verifiable instructions and gold responses, for the
embedded demo (and any run that wants a small IFEval-style training and held-out set).

`build_curriculum(seed=...)` is deterministic. It draws topics (curriculum_topics.py), a task
sentence and one to three compatible IFEval instructions (compatibility = lm_eval's own
INSTRUCTION_CONFLICTS plus a few layout rules of ours), builds a gold response from the topic's
facts that meets every instruction, and keeps the item only if our verifier (lm_eval's checkers)
passes it strictly; a failed draw is retried with fresh randomness. Train and held-out items use
disjoint topics, so held-out accuracy measures instruction following on unseen content. Gold
responses stay under ~120 words: they train a 270M model on a CPU.

It also builds evaluation-fine-tuning (EFT) examples for the Self-Rewarding judge (see
curriculum_eft.py). Not covered: language:response_language and nth_paragraph_first_word (no
non-English facts; paragraphs use IFEval's *** divider instead). Prompts contain no commas, so
punctuation:no_comma combines with combination:repeat_prompt.

CLI: `python -m services.curriculum.generator --out examples/` writes curriculum_train.jsonl,
curriculum_heldout.jsonl and curriculum_eft.jsonl.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import re
from pathlib import Path

from services.judging import verifier
from services.curriculum.text import (
    END_PHRASES, FORBIDDEN_POOL, PLACEHOLDER_LINES, REPEAT_SENTENCE, TASKS, describe,
)
from services.curriculum.topics import TOPICS

log = logging.getLogger(__name__)

MAX_GOLD_WORDS = 120
USED_IDS = [
    "change_case:english_lowercase", "change_case:english_capital", "change_case:capital_word_frequency",
    "punctuation:no_comma", "length_constraints:number_words", "length_constraints:number_sentences",
    "length_constraints:number_paragraphs", "detectable_format:title", "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections", "detectable_format:json_format",
    "detectable_format:multiple_sections", "detectable_format:constrained_response", "startend:end_checker",
    "startend:quotation", "keywords:existence", "keywords:forbidden_words", "keywords:letter_frequency",
    "keywords:frequency", "detectable_content:postscript", "detectable_content:number_placeholders",
    "combination:repeat_prompt", "combination:two_responses",
]
# Ids that decide the overall shape of a response: at most one per prompt.
LAYOUT_IDS = {
    "length_constraints:number_paragraphs", "detectable_format:number_bullet_lists",
    "detectable_format:multiple_sections", "detectable_format:json_format",
    "combination:two_responses", "detectable_format:constrained_response",
}
# Pairs IFEval allows but that make odd requests (a lowercase "section 1" does not match
# IFEval's case-sensitive section marker).
EXTRA_CONFLICTS = {
    frozenset({"detectable_format:multiple_sections", "change_case:english_lowercase"}),
    frozenset({"detectable_format:multiple_sections", "change_case:english_capital"}),
}


_PRONOUN = re.compile(r"(It|Its|They|Their|This|These)\b")


def _compatible(chosen: list[str], candidate: str, table: dict[str, set[str]]) -> bool:
    for other in chosen:
        if candidate in table.get(other, set()) or other in table.get(candidate, set()):
            return False
        if frozenset({other, candidate}) in EXTRA_CONFLICTS:
            return False
        if other in LAYOUT_IDS and candidate in LAYOUT_IDS:
            return False
    return True


def _pick_ids(rng: random.Random, primary: str, table: dict[str, set[str]]) -> list[str]:
    size = rng.choices([1, 2, 3], weights=[35, 40, 25])[0]
    chosen = [primary]
    while len(chosen) < size:
        options = [i for i in USED_IDS if i not in chosen and _compatible(chosen, i, table)]
        if not options:
            break
        chosen.append(rng.choice(options))
    return chosen


def _content_words(text: str) -> list[str]:
    """Distinct lowercase words worth naming in a keyword instruction, in order of appearance."""
    seen: list[str] = []
    for word in re.findall(r"[A-Za-z]{5,}", text):
        w = word.lower()
        if w not in seen:
            seen.append(w)
    return seen


def _emphasize(rng: random.Random, sentence: str, mark) -> str:
    """Apply `mark` to one content word of a sentence, never the first (a leading `*` would
    read as a bullet)."""
    words = sentence.split(" ")
    spots = [i for i, w in enumerate(words) if i > 0 and re.fullmatch(r"[A-Za-z]{4,}", w)]
    if not spots:
        return sentence
    i = rng.choice(spots)
    words[i] = mark(words[i])
    return " ".join(words)


def _chunks(items: list[str], n: int) -> list[str]:
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        out.append(" ".join(items[start:end]))
        start = end
    return out


def _draft(rng: random.Random, topic: dict, ids: list[str]) -> tuple[str, dict[str, dict], str]:
    """Build (response, kwargs per id, task sentence) for one topic and instruction set."""
    has = set(ids).__contains__
    kw: dict[str, dict] = {i: {} for i in ids}
    pool = list(topic["facts"])
    k = rng.randint(2, min(4, len(pool)))
    # The first fact names the topic; later ones may say "It" or "They", so always lead with it.
    picked = [0, *sorted(rng.sample(range(1, len(pool)), k - 1))]
    facts = [pool[i] for i in picked]
    spare = [pool[i] for i in range(len(pool)) if i not in picked and not _PRONOUN.match(pool[i])]
    label = topic.get("label", topic["name"])
    task = rng.choice(TASKS).format(topic=label)

    if has("change_case:capital_word_frequency"):
        for j in rng.sample(range(len(facts)), 2):  # k >= 2, so two words at least
            facts[j] = _emphasize(rng, facts[j], str.upper)
    if has("detectable_format:number_highlighted_sections"):
        n = rng.randint(1, min(3, len(facts)))
        for j in range(n):
            facts[j] = _emphasize(rng, facts[j], lambda w: f"*{w}*")
        kw["detectable_format:number_highlighted_sections"] = {"num_highlights": n}

    if has("detectable_format:json_format"):
        body = json.dumps({"title": topic["title"], "facts": facts}, indent=2)
        if rng.random() < 0.5:
            body = f"```json\n{body}\n```"
    elif has("combination:two_responses"):
        half = max(1, len(facts) // 2)
        body = " ".join(facts[:half]) + "\n******\n" + " ".join(facts[half:] or spare[:1])
    elif has("detectable_format:constrained_response"):
        task = f"Here is a claim about {label}: {facts[0]} Is this claim true?"
        body = f"My answer is yes. {facts[-1] if len(facts) > 1 else ''}".strip()
    elif has("detectable_format:number_bullet_lists"):
        body = "\n".join(f"* {f}" for f in facts)
        kw["detectable_format:number_bullet_lists"] = {"num_bullets": len(facts)}
    elif has("length_constraints:number_paragraphs"):
        n = rng.randint(2, min(3, len(facts)))
        body = "\n\n***\n\n".join(_chunks(facts, n))
        kw["length_constraints:number_paragraphs"] = {"num_paragraphs": n}
    elif has("detectable_format:multiple_sections"):
        n = rng.randint(2, min(3, len(facts)))
        marker = rng.choice(["Section", "SECTION"])
        body = "\n\n".join(f"{marker} {j + 1}\n{text}" for j, text in enumerate(_chunks(facts, n)))
        kw["detectable_format:multiple_sections"] = {"section_spliter": marker, "num_sections": n}
    else:
        body = " ".join(facts)

    tail: list[str] = []
    if has("detectable_content:number_placeholders"):
        n = rng.randint(1, len(PLACEHOLDER_LINES))
        tail.append(PLACEHOLDER_LINES[n - 1])
        kw["detectable_content:number_placeholders"] = {"num_placeholders": n}
    if has("detectable_content:postscript"):
        marker = rng.choice(["P.S.", "P.P.S"])
        tail.append(f"{marker} {spare[0] if spare else 'Thanks for reading.'}")
        kw["detectable_content:postscript"] = {"postscript_marker": marker}
    if has("startend:end_checker"):
        phrase = rng.choice(END_PHRASES)
        tail.append(phrase)
        kw["startend:end_checker"] = {"end_phrase": phrase}
    text = "\n\n".join([body, *tail])
    if has("detectable_format:title"):
        text = f"<<{topic['title']}>>\n\n{text}"
    if has("keywords:existence"):
        words = [w for w in _content_words(body) if w not in ("title", "facts")]  # not JSON keys
        kw["keywords:existence"] = {"keywords": sorted(rng.sample(words, min(len(words), rng.randint(1, 2))))}
    if has("combination:repeat_prompt"):
        request = " ".join([task, *(describe(i, kw[i], rng) for i in ids if i != "combination:repeat_prompt")])
        kw["combination:repeat_prompt"] = {"prompt_to_repeat": request}
        text = f"{request}\n\n{text}"
    if has("startend:quotation"):
        # A bullet on the first line would lose its `*` to the quote: open the quote on its own line.
        text = f'"\n{text}\n"' if text.startswith("*") else f'"{text}"'
    if has("change_case:english_lowercase"):
        text = text.lower()
    if has("change_case:english_capital"):
        text = text.upper()

    _measure(rng, text, body, kw)
    return text, kw, task


def _around(rng: random.Random, count: int, floor: int = 2) -> tuple[str, int]:
    """A (relation, threshold) pair that `count` satisfies ("at least" only from `floor` up, so
    no prompt asks for "at least 1 times")."""
    if count >= floor and rng.random() < 0.5:
        return "at least", max(floor, count - rng.randint(0, 2))
    return "less than", count + rng.randint(1, 3)


def _measure(rng: random.Random, text: str, body: str, kw: dict[str, dict]) -> None:
    """Fill the kwargs that depend on the finished response (counts, absent words)."""
    if "length_constraints:number_words" in kw:
        n = verifier.count_words(text)
        if rng.random() < 0.5 and n >= 10:
            kw["length_constraints:number_words"] = {"num_words": n // 5 * 5, "relation": "at least"}
        else:
            kw["length_constraints:number_words"] = {"num_words": (n // 10 + 1) * 10 + rng.choice([0, 10]),
                                                     "relation": "less than"}
    if "length_constraints:number_sentences" in kw:
        rel, n = _around(rng, verifier.count_sentences(text))
        kw["length_constraints:number_sentences"] = {"num_sentences": n, "relation": rel}
    if "change_case:capital_word_frequency" in kw:
        rel, n = _around(rng, verifier.count_capital_words(text))
        kw["change_case:capital_word_frequency"] = {"capital_frequency": n, "capital_relation": rel}
    if "keywords:letter_frequency" in kw:
        letter = rng.choice("etaoinsrhlcdmu")
        rel, n = _around(rng, text.lower().count(letter))
        kw["keywords:letter_frequency"] = {"letter": letter, "let_frequency": n, "let_relation": rel}
    if "keywords:frequency" in kw:
        words = _content_words(body) or ["the"]
        # Prefer a word the response repeats, so "at least N" can ask for more than one use.
        repeated = [w for w in words if len(re.findall(w, text, flags=re.IGNORECASE)) > 1]
        word = rng.choice(repeated or words)
        rel, n = _around(rng, len(re.findall(word, text, flags=re.IGNORECASE)))
        kw["keywords:frequency"] = {"keyword": word, "frequency": n, "relation": rel}
    if "keywords:forbidden_words" in kw:
        absent = [w for w in FORBIDDEN_POOL if not re.search(rf"\b{w}\b", text, flags=re.IGNORECASE)]
        kw["keywords:forbidden_words"] = {"forbidden_words": sorted(rng.sample(absent, min(len(absent), 2)))}


def _make_item(rng: random.Random, topic: dict, primary: str, table: dict[str, set[str]]) -> dict | None:
    ids = _pick_ids(rng, primary, table)
    response, kw, task = _draft(rng, topic, ids)
    if "combination:repeat_prompt" in kw:
        prompt = f"{kw['combination:repeat_prompt']['prompt_to_repeat']} {REPEAT_SENTENCE}"
    else:
        prompt = " ".join([task, *(describe(i, kw[i], rng) for i in ids)])
    constraints = [{"id": i, "kwargs": kw[i]} for i in ids]
    if verifier.count_words(response) > MAX_GOLD_WORDS or "," in prompt:
        return None
    if not verifier.verify(response, constraints, prompt).strict:
        log.debug("dropped a gold response that fails its own constraints: %s %r", ids, response)
        return None
    return {"prompt": prompt, "reference": response, "constraints": constraints, "topic": topic["name"]}


def split_topics(seed: int = 0, heldout_fraction: float = 0.25) -> tuple[list[dict], list[dict]]:
    """(train topics, held-out topics): a seeded, disjoint split of the topic list."""
    topics = sorted(TOPICS, key=lambda t: t["name"])
    random.Random(f"topics-{seed}").shuffle(topics)
    n_heldout = max(1, round(len(topics) * heldout_fraction))
    return topics[n_heldout:], topics[:n_heldout]


def _items(rng: random.Random, topics: list[dict], n: int, table: dict[str, set[str]]) -> list[dict]:
    primaries = list(USED_IDS)
    rng.shuffle(primaries)
    items: list[dict] = []
    seen: set[str] = set()
    i = 0
    while len(items) < n and i < n * 20:  # bounded: a drop is retried, never looped forever
        topic, primary = topics[i % len(topics)], primaries[len(items) % len(primaries)]
        i += 1
        item = _make_item(rng, topic, primary, table)
        if item is not None and item["prompt"] not in seen:
            seen.add(item["prompt"])
            items.append(item)
    if len(items) < n:
        log.warning("curriculum: built %d of %d requested items", len(items), n)
    return items


def build_curriculum(*, seed: int = 0, n_train: int = 200, n_heldout: int = 200, n_eft: int = 60) -> dict[str, list[dict]]:
    """{"train": [...], "heldout": [...], "eft": [...]}. Train and held-out items are API prompt
    items {"prompt", "reference", "constraints", "topic"}; EFT items are SFT examples
    {"messages", "response"} for the rubric judge, built on train topics only."""
    if min(n_train, n_heldout, n_eft) < 0:
        raise ValueError(f"n_train, n_heldout and n_eft must be >= 0, got {n_train}, {n_heldout}, {n_eft}")
    from services.curriculum.eft import build_eft

    table = verifier.conflicts()
    train_topics, heldout_topics = split_topics(seed)
    rng = random.Random(seed)
    train = _items(rng, train_topics, n_train, table)
    heldout = _items(rng, heldout_topics, n_heldout, table)
    eft = build_eft(random.Random(f"eft-{seed}"), train, train_topics, n_eft)
    return {"train": train, "heldout": heldout, "eft": eft}


def write_jsonl(items: list[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path) -> list[dict]:
    items = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number} is not valid JSON ({err.msg}); one object per line") from err
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the built-in curriculum as JSONL files.")
    parser.add_argument("--out", default="examples", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-heldout", type=int, default=200)
    parser.add_argument("--n-eft", type=int, default=60)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = build_curriculum(seed=args.seed, n_train=args.n_train, n_heldout=args.n_heldout, n_eft=args.n_eft)
    for split, items in data.items():
        path = write_jsonl(items, Path(args.out) / f"curriculum_{split}.jsonl")
        log.info("wrote %d items to %s", len(items), path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
