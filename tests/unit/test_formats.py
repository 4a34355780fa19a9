"""Prompt sets and pairs through Parquet and `datasets` directories (services/gateway/formats.py):
export -> import gives the same prompts; pairs read back with datasets in TRL's columns; import
problems name the column or the row and field."""
from __future__ import annotations

import pytest

from services.gateway import formats

PROMPTS = [
    {"messages": [{"role": "user", "content": "Say hi."}], "reference": "Hi!", "constraints": None,
     "answer": None, "topic": None},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to 3."}],
     "reference": "1, 2, 3.", "constraints": None, "answer": "3", "topic": "counting"},
    {"messages": [{"role": "user", "content": "Lowercase, 20 words."}], "reference": None,
     "constraints": [{"id": "change_case:english_lowercase", "kwargs": {}},
                     {"id": "length_constraints:number_words", "kwargs": {"relation": "at least", "num_words": 20}}],
     "answer": None, "topic": None},
]
PAIRS = [{"messages": [{"role": "user", "content": "Say hi."}], "chosen": "Hi!", "rejected": "Bye.", "round": 1,
          "source": "gold_vs_generated", "margin": None},
         {"messages": [{"role": "user", "content": "Count."}], "chosen": "1 2 3", "rejected": "3 2 1", "round": 2,
          "source": "judge_best_worst", "margin": 2.5}]


@pytest.mark.parametrize("fmt,name", [("parquet", "p.parquet"), ("hf", "p_dir"), ("jsonl", "p.jsonl")])
def test_prompt_set_round_trips(tmp_path, fmt, name):
    out = tmp_path / name
    records = formats.upload_records(PROMPTS) if fmt == "jsonl" else formats.prompt_records(PROMPTS)
    formats.write(records, out, fmt, "prompts")
    if fmt == "jsonl":
        from services.gateway.validation import parse_jsonl

        items, errors = parse_jsonl(out.read_text())
    else:
        items, errors = formats.items_from_table(formats.read_table(out), {})
    assert errors == []
    assert items == PROMPTS


def test_prompt_columns_in_datasets(tmp_path):
    import datasets

    formats.write(formats.prompt_records(PROMPTS), tmp_path / "d", "hf", "prompts")
    ds = datasets.load_from_disk(str(tmp_path / "d"))
    assert ds.column_names == ["prompt", "reference", "constraints", "answer", "topic"]
    assert ds[1]["prompt"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_pairs_load_with_datasets_in_trl_columns(tmp_path, fmt):
    import datasets

    out = tmp_path / ("pairs.parquet" if fmt == "parquet" else "pairs")
    formats.write(formats.pair_records(PAIRS), out, fmt, "pairs")
    ds = datasets.Dataset.from_parquet(str(out)) if fmt == "parquet" else datasets.load_from_disk(str(out))
    assert ds.column_names == ["prompt", "chosen", "rejected", "round", "source", "margin"]
    assert ds[0]["prompt"] == [{"role": "user", "content": "Say hi."}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Hi!"}]
    assert ds[1]["rejected"] == [{"role": "assistant", "content": "3 2 1"}]
    assert ds["round"] == [1, 2] and ds["margin"] == [None, 2.5] and ds[1]["source"] == "judge_best_worst"


def test_standard_style_is_plain_text_and_refuses_chats(tmp_path):
    import datasets

    formats.write(formats.pair_records(PAIRS, "standard"), tmp_path / "s.parquet", "parquet", "pairs", "standard")
    ds = datasets.Dataset.from_parquet(str(tmp_path / "s.parquet"))
    assert ds[0]["prompt"] == "Say hi." and ds[0]["chosen"] == "Hi!" and ds[0]["rejected"] == "Bye."
    with pytest.raises(ValueError, match="prompt 1.*conversational"):
        formats.prompt_records(PROMPTS, "standard")


def test_empty_export_keeps_its_columns(tmp_path):
    import pyarrow.parquet as pq

    formats.write([], tmp_path / "e.parquet", "parquet", "pairs")  # (datasets cannot read a 0-row Parquet file)
    assert pq.read_table(tmp_path / "e.parquet").column_names[:3] == ["prompt", "chosen", "rejected"]
    with pytest.raises(ValueError, match="no pairs to export"):  # datasets cannot load a 0-row directory back
        formats.write([], tmp_path / "e", "hf", "pairs")


def _parquet(tmp_path, columns: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def test_import_with_a_column_mapping(tmp_path):
    path = _parquet(tmp_path, {"instruction": ["Write a poem.", "Name a fruit."], "output": ["Roses.", "Apple."],
                               "id": [7, 8]})
    mapping, errors = formats.parse_mapping(["prompt=instruction", "reference=output"])
    items, errors = formats.items_from_table(formats.read_table(path), mapping)
    assert errors == []
    assert [i["messages"][0]["content"] for i in items] == ["Write a poem.", "Name a fruit."]
    assert [i["reference"] for i in items] == ["Roses.", "Apple."]


def test_ifeval_style_struct_constraints_drop_null_kwargs(tmp_path):
    # Arrow gives every struct every key: the second constraint's kwargs come back with num_words: None.
    cons = [[{"id": "length_constraints:number_words", "kwargs": {"relation": "at least", "num_words": 5}},
             {"id": "change_case:english_lowercase", "kwargs": {"relation": None, "num_words": None}}]]
    path = _parquet(tmp_path, {"prompt": ["Write."], "constraints": cons})
    items, errors = formats.items_from_table(formats.read_table(path), {})
    assert errors == [] and items[0]["constraints"][1] == {"id": "change_case:english_lowercase", "kwargs": {}}


@pytest.mark.parametrize("entries,loc,text", [
    (["prompt=nope"], ["map", "prompt"], "no column 'nope'"),
    (["reference=output"], ["map", "prompt"], "no 'prompt' column"),
    (["colour=instruction"], ["map", "colour"], "unknown prompt field"),
    (["prompt"], ["map"], "not field=column"),
])
def test_mapping_errors_name_the_field_and_column(tmp_path, entries, loc, text):
    path = _parquet(tmp_path, {"instruction": ["x"], "output": ["y"]})
    mapping, errors = formats.parse_mapping(entries)
    if not errors:
        _, errors = formats.items_from_table(formats.read_table(path), mapping)
    assert errors and errors[0]["loc"] == loc and text in errors[0]["msg"], errors


def test_bad_rows_are_named_and_nothing_is_kept(tmp_path):
    path = _parquet(tmp_path, {"prompt": ["ok", "", None, "fine"], "constraints": [None, None, None, "{oops"]})
    items, errors = formats.items_from_table(formats.read_table(path), {})
    assert items == []
    locs = [e["loc"] for e in errors]
    assert ["file", "row 1", "prompt"] in locs and ["file", "row 2", "prompt"] in locs
    assert ["file", "row 3", "constraints"] in locs


def test_unreadable_files_and_dataset_dicts(tmp_path):
    import datasets

    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="Parquet"):
        formats.read_table(tmp_path / "x.parquet")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["a"]}),
                               "test": datasets.Dataset.from_dict({"prompt": ["b"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]"):
        formats.read_table(tmp_path / "dd")
    items, errors = formats.items_from_table(formats.read_table(tmp_path / "dd", "test"), {})
    assert items[0]["messages"][0]["content"] == "b"
