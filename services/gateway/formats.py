"""Prompt sets and preference pairs as the files people load: JSONL, Parquet, and a Hugging Face
`datasets` directory (`save_to_disk` / `load_from_disk`). Pure code on plain dicts: no database, no
HTTP; the routes and the CLI fetch the rows and call these.

Pairs use TRL's preference columns, so `DPOTrainer(train_dataset=load_from_disk(...))` takes them
as they are: `prompt`, `chosen`, `rejected`, plus `round`, `source`, `margin`. The default
"conversational" style keeps the chat (prompt = messages, chosen / rejected = one assistant
message), which is how Autodidact trained on them; "standard" gives plain strings and needs every
prompt to be a single user message.

Prompt sets: `prompt` (messages, or text in the standard style), `reference`, `constraints`,
`answer`, `topic`. In Parquet and dataset directories `constraints` is a JSON string: IFEval
kwargs differ per instruction, and one Arrow struct for all of them would invent null keys.

Imports read a Parquet file or a dataset directory, map columns to prompt fields
(`{"prompt": "instruction", "reference": "output"}`; unmapped fields are taken from a column of
their own name when there is one, other columns are ignored) and validate every row with the same
code as a JSONL upload (services/gateway/validation.py). Rows are named by their 0-based index,
as `dataset[i]` does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Literal

from services.gateway.validation import FIELDS, validate_item

Format = Literal["jsonl", "parquet", "hf"]
Style = Literal["conversational", "standard"]
FORMATS = ("jsonl", "parquet", "hf")
STYLES = ("conversational", "standard")
MAX_ROWS = 100_000  # rows one import may hold (as a JSON body's items)
MAX_ERRORS = 100


def _err(loc: list, msg: str) -> dict:
    return {"loc": loc, "msg": msg, "type": "invalid"}


# ---------------------------------------------------------------- records
def _prompt_value(messages: list[dict], style: Style, where: str) -> Any:
    if style == "conversational":
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if len(messages) != 1 or messages[0]["role"] != "user":
        raise ValueError(f"{where}: the standard style holds a prompt as plain text, but this prompt is a chat "
                         f"of {len(messages)} messages; export it with style 'conversational'")
    return messages[0]["content"]


def prompt_records(prompts: Iterable[dict], style: Style = "conversational") -> list[dict]:
    """Prompt rows (messages, reference, constraints, answer, topic) as export records."""
    out = []
    for i, p in enumerate(prompts):
        out.append({"prompt": _prompt_value(p["messages"], style, f"prompt {i}"),
                    "reference": p.get("reference"),
                    "constraints": json.dumps(p["constraints"]) if p.get("constraints") is not None else None,
                    "answer": p.get("answer"), "topic": p.get("topic")})
    return out


def upload_records(prompts: Iterable[dict]) -> list[dict]:
    """Prompt rows in the JSONL upload format: text for a single user message, else the chat;
    absent fields left out; constraints as JSON (a list), not a string."""
    out = []
    for p in prompts:
        msgs = p["messages"]
        item = {"prompt": msgs[0]["content"] if len(msgs) == 1 and msgs[0]["role"] == "user" else msgs}
        item.update({k: p[k] for k in ("reference", "constraints", "answer", "topic") if p.get(k) is not None})
        out.append(item)
    return out


def pair_records(pairs: Iterable[dict], style: Style = "conversational") -> list[dict]:
    """Pairs (messages, chosen, rejected, round, source, margin) in TRL's preference format."""
    out = []
    for i, p in enumerate(pairs):
        prompt = _prompt_value(p["messages"], style, f"pair {i}")
        if style == "conversational":
            chosen = [{"role": "assistant", "content": p["chosen"]}]
            rejected = [{"role": "assistant", "content": p["rejected"]}]
        else:
            chosen, rejected = p["chosen"], p["rejected"]
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "round": p["round"],
                    "source": p["source"], "margin": p.get("margin")})
    return out


# ---------------------------------------------------------------- tables and files
def _schema(kind: Literal["prompts", "pairs"], style: Style):
    import pyarrow as pa

    chat = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    text = chat if style == "conversational" else pa.string()
    if kind == "prompts":
        return pa.schema([("prompt", text), ("reference", pa.string()), ("constraints", pa.string()),
                          ("answer", pa.string()), ("topic", pa.string())])
    return pa.schema([("prompt", text), ("chosen", text), ("rejected", text), ("round", pa.int32()),
                      ("source", pa.string()), ("margin", pa.float64())])


def table(records: list[dict], kind: Literal["prompts", "pairs"], style: Style = "conversational"):
    """An Arrow table with a fixed schema (an empty export still has its columns and types)."""
    import pyarrow as pa

    return pa.Table.from_pylist(records, schema=_schema(kind, style))


def write(records: list[dict], out: Path, fmt: Format, kind: Literal["prompts", "pairs"],
          style: Style = "conversational") -> Path:
    """Write records as a JSONL file, a Parquet file or a `save_to_disk` directory at `out`."""
    out = Path(out)
    if fmt == "jsonl":
        with out.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        return out
    tab = table(records, kind, style)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(tab, out)
        return out
    if fmt == "hf":
        import datasets

        if not records:  # datasets 5 writes a 0-row directory that its load_from_disk cannot read
            raise ValueError(f"no {kind} to export; a datasets directory needs at least one row")

        datasets.disable_progress_bars()
        datasets.Dataset(tab).save_to_disk(str(out))
        return out
    raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")


# ---------------------------------------------------------------- import
def parse_mapping(entries: Iterable[str], loc: str = "map") -> tuple[dict[str, str], list[dict]]:
    """'field=column' strings (each may also hold several, comma-separated) -> {field: column}."""
    mapping: dict[str, str] = {}
    errors: list[dict] = []
    for entry in entries:
        for part in (p.strip() for p in entry.split(",")):
            if not part:
                continue
            field, sep, column = (s.strip() for s in part.partition("="))
            if not sep or not field or not column:
                errors.append(_err([loc], f"{part!r} is not field=column (e.g. prompt=instruction)"))
            elif field not in FIELDS:
                errors.append(_err([loc, field], f"unknown prompt field {field!r}; map one of {list(FIELDS)}"))
            elif field in mapping and mapping[field] != column:
                errors.append(_err([loc, field], f"{field} is mapped twice ({mapping[field]!r} and {column!r})"))
            else:
                mapping[field] = column
    return mapping, errors


def resolve_mapping(columns: list[str], mapping: dict[str, str], loc: str = "map") -> tuple[dict[str, str], list[dict]]:
    """The mapping completed with same-named columns, or errors naming a field whose column is missing."""
    errors = [_err([loc, f], f"no column {c!r} in the data; its columns are {columns}")
              for f, c in mapping.items() if c not in columns]
    full = {**{f: f for f in FIELDS if f in columns}, **mapping}
    if "prompt" not in full and not errors:
        errors.append(_err([loc, "prompt"], f"no 'prompt' column; its columns are {columns}: name the prompt's "
                                            "column with prompt=COLUMN"))
    return full, errors


def _clean(value: Any) -> Any:
    """Arrow gives every struct all its keys (nulls where a row had none): drop the null keys."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def items_from_rows(rows: Iterable[dict], mapping: dict[str, str], where: str = "file",
                    start: int = 0) -> tuple[list[dict], list[dict]]:
    """Validated Prompt rows from mapped records, or every problem with its row and field."""
    items: list[dict] = []
    errors: list[dict] = []
    for i, row in enumerate(rows, start=start):
        loc = [where, f"row {i}"]
        item = {f: row.get(c) for f, c in mapping.items()}
        item = {f: v for f, v in item.items() if v is not None or f == "prompt"}
        if isinstance(item.get("constraints"), str):
            try:
                item["constraints"] = json.loads(item["constraints"])
            except ValueError:
                errors.append(_err(loc + ["constraints"], "constraints text is not JSON; give a JSON list of "
                                                         "{id, kwargs} or a list column"))
                continue
        item = _clean(item)
        if item.get("prompt") is None:
            errors.append(_err(loc + ["prompt"], f"the prompt (column {mapping['prompt']!r}) is empty"))
            continue
        before = len(errors)
        clean = validate_item(item, loc, errors)
        if clean is not None and len(errors) == before:
            items.append(clean)
        if len(errors) >= MAX_ERRORS:
            break
    return (items if not errors else []), errors[:MAX_ERRORS]


def read_table(path: Path, split: str | None = None):
    """An Arrow table from a Parquet file (or a file-like object) or a `save_to_disk` directory
    (a DatasetDict needs `split` unless it has one split). Raises ValueError with what to do."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if hasattr(path, "read") or not Path(path).is_dir():
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"not a readable Parquet file ({exc}); give a .parquet file or a dataset "
                             "directory written by save_to_disk") from exc
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{path} is not a dataset directory written by save_to_disk ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            raise ValueError(f"{path} holds the splits {names}; choose one (the CLI's --dataset-split)")
        ds = ds[split]
    elif split is not None:
        raise ValueError(f"{path} holds one dataset, not splits; leave out --dataset-split")
    return ds.with_format("arrow")[:]


def items_from_table(tab, mapping: dict[str, str], where: str = "file") -> tuple[list[dict], list[dict]]:
    """Map and validate every row of an Arrow table (read a batch at a time)."""
    if tab.num_rows > MAX_ROWS:
        return [], [_err([where], f"{tab.num_rows} rows; at most {MAX_ROWS} in one prompt set: split the data")]
    if tab.num_rows == 0:
        return [], [_err([where], "the data holds no rows")]
    full, errors = resolve_mapping(tab.column_names, mapping)
    if errors:
        return [], errors
    items: list[dict] = []
    errors = []
    start = 0
    for batch in tab.select(list(dict.fromkeys(full.values()))).to_batches(max_chunksize=2048):
        got, errs = items_from_rows(batch.to_pylist(), full, where, start)
        items += got
        errors += errs
        start += batch.num_rows
        if len(errors) >= MAX_ERRORS:
            break
    return (items if not errors else []), errors[:MAX_ERRORS]


def parquet_table(f, *, max_bytes: int):
    """An Arrow table from a Parquet file object, refused (ValueError) before reading when its
    metadata says more than MAX_ROWS rows or `max_bytes` of uncompressed column data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(f).metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if meta.num_rows > MAX_ROWS:
            raise ValueError(f"{meta.num_rows} rows; at most {MAX_ROWS} in one prompt set: split the data")
        if size > max_bytes:
            raise ValueError(f"{size} bytes of uncompressed data; at most {max_bytes} in one upload: split the data")
        f.seek(0)
        return pq.read_table(f)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not a readable Parquet file ({exc})") from exc
