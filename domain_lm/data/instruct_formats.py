"""Import instruction data declared the way LLaMA-Factory users write it (alpaca and sharegpt).

Both formats become chat examples ``{"messages": [{"role", "content"}, ...]}`` ending with an
assistant turn, the same shape ``sft_data`` renders from task templates, so user data and
templated bank tasks mix in one training set.

A ``dataset_info.json`` maps dataset names to files and column names, e.g.::

    {"my_faq": {"file_name": "faq.json", "formatting": "sharegpt",
                "columns": {"messages": "conversations", "system": "system"},
                "tags": {"role_tag": "from", "content_tag": "value",
                         "user_tag": "human", "assistant_tag": "gpt"}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domain_lm.errors import DataError

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
    "observation_tag": "observation",
    "function_tag": "function_call",
}


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON list or a JSON Lines file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Instruction dataset {p} does not exist. Check `file_name` in dataset_info.json or the path you passed.")
    text = p.read_text(encoding="utf-8")
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"Instruction dataset {p} is not valid JSON / JSON Lines: {e}. Each row must be one JSON object.") from None
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"Instruction dataset {p} must hold JSON objects (one per row).")
    return rows


def alpaca_to_messages(row: dict[str, Any], columns: dict[str, str] | None = None) -> dict[str, Any]:
    """One alpaca row (instruction / input / output, optional system and history) -> chat example.

    As in LLaMA-Factory, ``input`` is appended to ``instruction`` on a new line, and ``history`` is a
    list of ``[user, assistant]`` pairs placed before the final exchange.
    """
    cols = {**ALPACA_COLUMNS, **(columns or {})}
    instruction = str(row.get(cols["prompt"]) or "")
    query = str(row.get(cols["query"]) or "")
    response = row.get(cols["response"])
    if response is None or not (instruction or query):
        raise DataError(f"Alpaca row needs {cols['prompt']!r} (or {cols['query']!r}) and {cols['response']!r}; got keys {sorted(row)}.")
    msgs: list[dict[str, str]] = []
    system = row.get(cols["system"])
    if system:
        msgs.append({"role": "system", "content": str(system)})
    for pair in row.get(cols["history"]) or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"Alpaca history items must be [user, assistant] pairs; got {pair!r}.")
        msgs += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
    user = "\n".join(x for x in (instruction, query) if x)
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": str(response)}]
    return {"messages": msgs}


def sharegpt_to_messages(row: dict[str, Any], columns: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """One sharegpt row (a list of ``{from, value}`` turns) -> chat example.

    Also accepts OpenAI-style ``{role, content}`` turns. The last turn must be the assistant's;
    observation/function turns are not supported for SFT here and raise.
    """
    cols = {**SHAREGPT_COLUMNS, **(columns or {})}
    tg = {**SHAREGPT_TAGS, **(tags or {})}
    turns = row.get(cols["messages"])
    if not isinstance(turns, list) or not turns:
        raise DataError(f"ShareGPT row needs a non-empty list in {cols['messages']!r}; got keys {sorted(row)}.")
    roles = {"user": "user", "assistant": "assistant", "system": "system"}
    roles.update({tg["user_tag"]: "user", tg["assistant_tag"]: "assistant", tg["system_tag"]: "system"})
    msgs: list[dict[str, str]] = []
    system = row.get(cols["system"])
    if system:
        msgs.append({"role": "system", "content": str(system)})
    for t in turns:
        who = t.get(tg["role_tag"], t.get("role"))
        content = t.get(tg["content_tag"], t.get("content"))
        if who not in roles:
            expected = f"{tg['user_tag']!r}, {tg['assistant_tag']!r} or {tg['system_tag']!r}"
            raise DataError(f"ShareGPT turn role {who!r} is not supported for SFT (expected {expected}).")
        msgs.append({"role": roles[who], "content": str(content)})
    if msgs[-1]["role"] != "assistant":
        raise DataError("ShareGPT conversation must end with an assistant turn to be used for SFT.")
    return {"messages": msgs}


def load_instruct_file(
    path: str | Path, formatting: str, columns: dict[str, str] | None = None, tags: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """All rows of an alpaca/sharegpt file as chat examples."""
    rows = read_records(path)
    if formatting == "alpaca":
        return [alpaca_to_messages(r, columns) for r in rows]
    if formatting == "sharegpt":
        return [sharegpt_to_messages(r, columns, tags) for r in rows]
    raise DataError(f"Unknown formatting {formatting!r} for {path}; use 'alpaca' or 'sharegpt'.")


def load_dataset_info(info_path: str | Path, names: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Load the datasets a ``dataset_info.json`` declares (all, or ``names``), files relative to it."""
    info_path = Path(info_path)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"Cannot read dataset_info file {info_path}: {e}") from None
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names or list(info):
        if name not in info:
            raise DataError(f"Dataset {name!r} is not declared in {info_path} (declared: {', '.join(info)}).")
        spec = info[name]
        if "file_name" not in spec:
            raise DataError(f"Dataset {name!r} in {info_path} has no `file_name` (hub/script datasets are not supported offline).")
        file = info_path.parent / spec["file_name"]
        out[name] = load_instruct_file(file, spec.get("formatting", "alpaca"), spec.get("columns"), spec.get("tags"))
    return out
