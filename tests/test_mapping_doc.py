"""The mapping document records what a command changed, and a write encodes exactly that; entry
ids are UUIDs or the entry is corrupt."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_persist import mapping, validate
from claude_persist.errors import CorruptEntryError, exit_code_for


def big_text(count: int) -> str:
    """A mapping file of ``count`` sessions in our layout (one entry per line)."""
    doc = mapping.MappingDoc("/w", {
        f"s-{i:05d}": {"session_id": str(uuid.UUID(int=i, version=4)), "n": i,
                       "history": [{"session_id": str(uuid.UUID(int=i + 1, version=4))}]}
        for i in range(count)})
    return mapping.dump(doc)


def test_what_the_document_holds_is_what_it_writes_even_after_an_edit_in_place() -> None:
    """An entry handed out by the document is a copy: changing it in place changes neither the
    document nor the file until it is put back, so the two never disagree (an edit made in
    place used to reach the document but not the written line)."""
    doc = mapping.parse(big_text(300), for_writing=True)
    entry = doc.aliases["s-00150"]
    entry["n"] = -1
    entry["history"].append({"session_id": "x"})
    assert doc.aliases["s-00150"]["n"] == 150  # not changed behind the document's back
    written = json.loads(mapping.dump(doc))["aliases"]
    assert written == dict(doc.aliases)
    assert doc.changed == frozenset()
    doc.put("s-00150", entry)
    entry["n"] = -2  # after the put: the document kept its own copy
    written = json.loads(mapping.dump(doc))["aliases"]
    assert written["s-00150"]["n"] == -1 and len(written["s-00150"]["history"]) == 2
    assert written == dict(doc.aliases)


def test_a_write_at_10000_sessions_encodes_only_the_entries_it_changed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = big_text(10_000)
    encoded: list[str] = []
    real_row = mapping._row

    def counting_row(name: str, entry: dict[str, Any]) -> str:
        encoded.append(name)
        return real_row(name, entry)

    monkeypatch.setattr(mapping, "_row", counting_row)
    doc = mapping.parse(text, for_writing=True)
    assert mapping.dump(doc) == text and encoded == []  # nothing changed: every line kept
    doc.put("s-05000", {**doc.aliases["s-05000"], "n": -5})
    doc.put("new", {"session_id": str(uuid.uuid4())})
    doc.remove("s-00007")
    after = mapping.dump(doc)
    assert sorted(encoded) == ["new", "s-05000"]
    assert after == mapping.dump(mapping.parse(after))  # the same text as encoding it all
    data = json.loads(after)["aliases"]
    assert data["s-05000"]["n"] == -5 and "new" in data and "s-00007" not in data
    assert len(data) == 10_000


@pytest.mark.parametrize("line_end", [', "s-00002": {"session_id": "OLD"}',
                                      ',\t"s-00002" :{"session_id": "OLD"} ',
                                      ', \n"s-00002": {"session_id": "OLD"}'])
def test_a_line_hiding_a_second_key_is_never_kept(line_end: str) -> None:
    """JSON keeps the last of two equal keys; a line written by hand that holds a second key
    is not reused, or a removed or changed entry could come back from it."""
    text = big_text(300)
    lines = text.split("\n")
    index = next(i for i, line in enumerate(lines) if line.startswith('    "s-00001"'))
    lines[index] = lines[index].rstrip(",") + line_end + ","
    text = "\n".join(lines)
    assert json.loads(text)["aliases"]["s-00002"]["n"] == 2  # the later key wins
    doc = mapping.parse(text, for_writing=True)
    doc.remove("s-00002")
    assert "s-00002" not in json.loads(mapping.dump(doc))["aliases"]
    doc = mapping.parse(text, for_writing=True)
    doc.put("s-00002", {"session_id": str(uuid.uuid4()), "n": 22})
    assert json.loads(mapping.dump(doc))["aliases"]["s-00002"]["n"] == 22


def test_a_nested_object_in_an_entry_keeps_its_line() -> None:
    """An entry with an object value followed by another key looks like a second pair to the
    quick search; the careful check keeps its line, so writes stay one-entry cheap."""
    doc = mapping.MappingDoc("/w", {"a": {"session_id": str(uuid.uuid4()), "x": {"y": 1},
                                          "z": 2}, "b": {"session_id": str(uuid.uuid4())}})
    text = mapping.dump(doc)
    read = mapping.parse(text, for_writing=True)
    assert set(read._rows) == {"a", "b"}


def test_session_ids_are_checked_as_uuids() -> None:
    good = str(uuid.uuid4())
    assert validate.is_session_id(good) and validate.is_session_id(good.upper())
    for bad in ("../../../x", "", good + "\n", good[:-1], None, 7, f"{good}/x"):
        assert not validate.is_session_id(bad), bad


def test_an_entry_whose_id_is_not_a_uuid_is_corrupt(tmp_path: Path) -> None:
    good = str(uuid.uuid4())
    text = json.dumps({"workspace_dir": "/w", "aliases": {
        "evil": {"session_id": "../../../x"}, "empty": {}, "fine": {"session_id": good}}})
    doc = mapping.parse(text)
    doc.source = str(tmp_path / "m.json")
    assert [e.name for e in doc.entries()] == ["fine"]  # listing leaves it out
    with pytest.raises(CorruptEntryError) as caught:
        doc.entry("evil")
    message = str(caught.value)
    assert "'evil'" in message and "corrupt" in message and "not a UUID" in message
    assert str(tmp_path / "m.json") in message and exit_code_for(caught.value) == 2
    assert "--" not in message  # a library message names no command-line flag
    with pytest.raises(CorruptEntryError):
        doc.entry("empty")
    assert doc.entry("missing") is None


def test_a_value_that_is_no_entry_is_kept_shown_and_deletable() -> None:
    good = str(uuid.uuid4())
    text = json.dumps({"workspace_dir": "/w", "aliases": {
        "fine": {"session_id": good}, "five": 5, "nothing": None, "blank": "", "list": [1]}})
    doc = mapping.parse(text, for_writing=True)
    assert doc.unusable() == ["blank", "five", "list", "nothing"]
    assert [e.name for e in doc.entries()] == ["fine"] and doc.has("five")
    with pytest.raises(CorruptEntryError, match=r"'five' .* is 5, not an object"):
        doc.entry("five")
    doc.put("other", {"session_id": str(uuid.uuid4())})
    written = json.loads(mapping.dump(doc))["aliases"]
    assert written["five"] == 5 and written["nothing"] is None and written["list"] == [1]
    assert written["blank"] == "" and written["fine"] == {"session_id": good}
    doc.remove("five")
    doc.put("list", {"session_id": good})  # replacing one makes it an entry again
    after = mapping.parse(mapping.dump(doc))
    assert "five" not in json.loads(mapping.dump(doc))["aliases"]
    assert after.unusable() == ["blank", "nothing"] and after.entry("list") is not None
