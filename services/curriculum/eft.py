"""Evaluation-fine-tuning (EFT) examples for the Self-Rewarding judge, built from curriculum items.

Self-Rewarding LMs train M1 on instruction data plus EFT data: a prompt, a response, a short
justification and the rubric score, so the model learns to judge in the rubric's format. The
paper takes these from human-ranked data; we have none, so we make candidates of known quality
from a curriculum item's gold response and topic facts, one rubric level each:

  5 the gold response (relevant, complete, follows every instruction, nothing extra)
  4 the gold response behind a chatty opening line the request did not ask for
  3 one plain fact about the topic, ignoring the formatting instructions
  2 the first half of the gold response, cut off mid-way
  1 a vague sentence that names the topic and says nothing
  0 a good answer about a different topic

The justification names what the verifier found broken, so the text agrees with the checks.
Examples are {"messages": rubric chat, "response": justification + "Score: N"}.
"""
from __future__ import annotations

import random

from services.judging import verifier
from services.judging.rubric import eft_target, rubric_messages

OPENERS = ["Sure! Here is my answer.", "Great question! Let me help with that.", "Of course. Happy to help!"]


def _short_name(ident: str) -> str:
    return ident.split(":", 1)[1].replace("_", " ")


def _broken(response: str, item: dict) -> list[str]:
    verdict = verifier.verify(response, item["constraints"], item["prompt"])
    return [_short_name(c["id"]) for c, ok in zip(item["constraints"], verdict.strict_per_instruction) if not ok]


def _list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _candidate(level: int, item: dict, topic: dict, other: dict, rng: random.Random) -> tuple[str, str]:
    """(response, justification) at one rubric level."""
    name = topic.get("label", topic["name"])
    gold = item["reference"]
    if level == 5:
        return gold, (f"The response is about {name} and answers the request directly and correctly. "
                      "It follows every instruction and contains nothing extraneous.")
    if level == 4:
        response = f"{rng.choice(OPENERS)}\n{gold}"
        broken = _broken(response, item)
        why = (f" The opening line also breaks the instructions about {_list(broken)}." if broken
               else " The opening line adds nothing the request asked for.")
        return response, (f"The response is relevant and gives clear and correct information about {name}. "
                          f"It starts with an unnecessary filler line so it is not impeccably tailored.{why}")
    if level == 3:
        response = topic["facts"][0]
        broken = _broken(response, item)
        miss = f" It ignores the instructions about {_list(broken)}." if broken else ""
        return response, (f"The response answers the basic request with one correct fact about {name}. "
                          f"It is useful but brief and leaves out detail a good answer would give.{miss}")
    if level == 2:
        words = gold.split()
        response = " ".join(words[: max(3, len(words) // 2)])
        return response, (f"The response starts to address the request about {name} but stops in the middle. "
                          "It covers part of the request without answering its basic elements.")
    if level == 1:
        response = f"{name[0].upper()}{name[1:]} is an interesting subject that many people like to talk about."
        return response, (f"The response mentions {name} so it is relevant. "
                          "It gives no real information and does not address the request.")
    response = " ".join(other["facts"][:3])
    return response, (f"The request is about {name} but the response talks about {other.get('label', other['name'])}. "
                      "It is not relevant to the request.")


def build_eft(rng: random.Random, items: list[dict], topics: list[dict], n: int) -> list[dict]:
    """n EFT examples cycling through levels 5..0 over the given (training) items and topics."""
    if n <= 0 or not items:
        return []
    by_name = {t["name"]: t for t in topics}
    examples = []
    for j in range(n):
        item = items[rng.randrange(len(items))]
        topic = by_name[item["topic"]]
        other = rng.choice([t for t in topics if t["name"] != topic["name"]])
        level = 5 - j % 6
        response, why = _candidate(level, item, topic, other, rng)
        prompt_messages = [{"role": "user", "content": item["prompt"]}]
        examples.append({"messages": rubric_messages(prompt_messages, response), "response": eft_target(why, level)})
    return examples
