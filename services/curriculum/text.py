"""Wording of the built-in curriculum: task sentences and how each IFEval instruction is asked.

The phrasing is ours (two variants where it helps), not IFEval's templates, and has no commas so
that every prompt can be repeated under punctuation:no_comma.
"""
from __future__ import annotations

import random

TASKS = [
    "Write a short note about {topic}.",
    "Tell me a few facts about {topic}.",
    "Explain {topic} to a curious teenager.",
    "Describe {topic} for a school newsletter.",
    "Give a brief overview of {topic}.",
    "What should everyone know about {topic}?",
    "Write a few lines about {topic} for a general audience.",
    "Share some interesting facts about {topic}.",
]
END_PHRASES = [
    "Is there anything else I can help with?",
    "Any other questions?",
    "Let me know if you want to learn more.",
    "Thanks for reading.",
    "That is all for now.",
]
FORBIDDEN_POOL = [
    "actually", "amazing", "awesome", "basically", "honestly", "literally", "nice",
    "obviously", "really", "simply", "stuff", "things", "totally", "very",
]
# Index n-1 holds a closing line with n placeholders.
PLACEHOLDER_LINES = [
    "Ask [name] for more details.",
    "Write to [name] at [email] to learn more.",
    "Meet [name] at [place] on [date] to learn more.",
]
REPEAT_SENTENCE = (
    "First repeat the request above word for word without change and then give your answer. "
    "Do not say anything before repeating the request and do not repeat this sentence."
)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _relation(rel: str) -> str:
    return "fewer than" if rel == "less than" else "at least"


def _words(words: list[str], joiner: str) -> str:
    quoted = [f'"{w}"' for w in words]
    return f"the word {quoted[0]}" if len(quoted) == 1 else "the words " + f" {joiner} ".join(quoted)


def describe(ident: str, kw: dict, rng: random.Random) -> str:
    """One instruction as a sentence of the prompt."""
    pick = rng.choice
    if ident == "change_case:english_lowercase":
        return pick(["Write your whole answer in English using only lowercase letters.",
                     "Use no capital letters anywhere in your English answer."])
    if ident == "change_case:english_capital":
        return pick(["Write your entire answer in English using only capital letters.",
                     "Your whole reply must be in English and in uppercase."])
    if ident == "change_case:capital_word_frequency":
        return (f"Use {_relation(kw['capital_relation'])} {kw['capital_frequency']} words "
                "written entirely in capital letters.")
    if ident == "punctuation:no_comma":
        return pick(["Do not use any commas.", "Avoid commas completely in your answer."])
    if ident == "length_constraints:number_words":
        return pick([f"Answer with {_relation(kw['relation'])} {kw['num_words']} words.",
                     f"Your answer should contain {_relation(kw['relation'])} {kw['num_words']} words."])
    if ident == "length_constraints:number_sentences":
        return f"Write {_relation(kw['relation'])} {kw['num_sentences']} sentences."
    if ident == "length_constraints:number_paragraphs":
        return (f"Write exactly {kw['num_paragraphs']} paragraphs and separate them "
                "with the markdown divider ***.")
    if ident == "detectable_format:title":
        return pick(["Give your answer a title wrapped in double angular brackets such as <<my title>>.",
                     "Start with a title in double angular brackets like <<title>>."])
    if ident == "detectable_format:number_bullet_lists":
        return f"Format the answer as exactly {kw['num_bullets']} markdown bullet points that start with *."
    if ident == "detectable_format:number_highlighted_sections":
        return f"Highlight at least {_n(kw['num_highlights'], 'word')} with markdown like *this*."
    if ident == "detectable_format:json_format":
        return pick(["Wrap your entire answer in valid JSON.", "Your whole output must be valid JSON."])
    if ident == "detectable_format:multiple_sections":
        marker = kw["section_spliter"]
        return (f"Split your answer into {kw['num_sections']} sections and start each one "
                f"with {marker} X such as {marker} 1.")
    if ident == "detectable_format:constrained_response":
        return ('Answer with one of the following options: "My answer is yes." or '
                '"My answer is no." or "My answer is maybe."')
    if ident == "startend:end_checker":
        return f'End your answer with the exact phrase "{kw["end_phrase"]}" and write nothing after it.'
    if ident == "startend:quotation":
        return pick(["Wrap your entire answer in double quotation marks.",
                     "Put your whole reply inside double quotes."])
    if ident == "keywords:existence":
        return f"Make sure to include {_words(kw['keywords'], 'and')}."
    if ident == "keywords:forbidden_words":
        return f"Do not use {_words(kw['forbidden_words'], 'or')}."
    if ident == "keywords:letter_frequency":
        return (f"The letter {kw['letter']} should appear {_relation(kw['let_relation'])} "
                f"{kw['let_frequency']} times in your answer.")
    if ident == "keywords:frequency":
        return f'Use the word "{kw["keyword"]}" {_relation(kw["relation"])} {kw["frequency"]} times.'
    if ident == "detectable_content:postscript":
        marker = kw["postscript_marker"]
        return f"At the end add a postscript that starts with {marker}" + ("" if marker.endswith(".") else ".")
    if ident == "detectable_content:number_placeholders":
        return (f"Include at least {_n(kw['num_placeholders'], 'placeholder')} in square brackets "
                "such as [name].")
    if ident == "combination:two_responses":
        return "Give two different answers separated by six asterisk symbols like ******."
    if ident == "combination:repeat_prompt":
        return REPEAT_SENTENCE
    raise ValueError(f"the curriculum has no wording for instruction {ident!r}")
