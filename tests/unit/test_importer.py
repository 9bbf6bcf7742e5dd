"""The importers: CSV cells stay text unless declared; JSON keys are read or refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import errors, importer


def load(tmp_path: Path, text: str) -> list[dict[str, object]]:
    path = tmp_path / "tasks.csv"
    path.write_text(text, encoding="utf-8")
    return [item.payload or {} for item in importer.load_file(path)]


def test_undeclared_cells_stay_text(tmp_path: Path) -> None:
    """nan, inf, 007, 1e5, true and a|b stay exactly the text that was written."""
    payloads = load(
        tmp_path,
        "kind,code,score,limit,big,flag,tags\ncampaign,007,nan,inf,1e5,true,a|b\n",
    )

    assert payloads == [
        {"code": "007", "score": "nan", "limit": "inf", "big": "1e5", "flag": "true", "tags": "a|b"}
    ]


def test_declared_columns_are_converted(tmp_path: Path) -> None:
    """name:int, :float, :bool, :list, :json and :text convert each cell to that type."""
    payloads = load(
        tmp_path,
        "kind,budget:int,bid:float,active:bool,ranges:list,extra:json,code:text\n"
        'campaign,007,1.5,TRUE,1.2.3.0/24 | 5.6.7.0/24,"{""a"": [1, null]}",42\n',
    )

    assert payloads == [
        {
            "budget": 7,
            "bid": 1.5,
            "active": True,
            "ranges": ["1.2.3.0/24", "5.6.7.0/24"],
            "extra": {"a": [1, None]},
            "code": "42",
        }
    ]


@pytest.mark.parametrize(
    ("header", "cell", "message"),
    [
        ("budget:int", "12.5", "column 'budget:int': '12.5' is not a whole number"),
        ("bid:float", "nan", "column 'bid:float': 'nan' is not a finite number"),
        ("bid:float", "-inf", "column 'bid:float': '-inf' is not a finite number"),
        ("active:bool", "yes", "column 'active:bool': 'yes' is not true or false"),
        ("extra:json", "NaN", "column 'extra:json': 'NaN' is not JSON (NaN is not a JSON number)"),
    ],
)
def test_a_cell_its_column_type_refuses_names_line_and_column(
    tmp_path: Path, header: str, cell: str, message: str
) -> None:
    """A declared column's bad cell is refused naming the file, the line and the column."""
    with pytest.raises(errors.InvalidTask) as refused:
        load(tmp_path, f"kind,{header}\ncampaign,\ncampaign,{cell}\n")

    assert str(refused.value) == f"{tmp_path / 'tasks.csv'}:3: {message}"


def test_unknown_column_type_lists_the_known_ones(tmp_path: Path) -> None:
    """budget:money is refused, listing the types a column may declare."""
    with pytest.raises(errors.InvalidTask, match="unknown type 'money'; write NAME:TYPE with TYPE"):
        load(tmp_path, "kind,budget:money\ncampaign,1\n")


def test_example_hierarchy_declares_its_numbers() -> None:
    """examples/hierarchy.csv sends its budget and bid as numbers, its names as text."""
    path = Path(__file__).resolve().parents[2] / "examples" / "hierarchy.csv"

    payloads = [item.payload or {} for item in importer.load_file(path)]

    assert payloads[0]["budget"] == 12000
    assert payloads[1]["bid"] == 1.7
    assert all(isinstance(p["name"], str) for p in payloads)


cells = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=',"|'),
    max_size=12,
).map(str.strip)


@settings(max_examples=80, deadline=None)
@given(values=st.lists(cells.filter(bool), min_size=1, max_size=5))
def test_any_undeclared_cell_round_trips_as_text(
    tmp_path_factory: pytest.TempPathFactory, values: list[str]
) -> None:
    """Whatever text an undeclared cell holds, the payload carries that same text."""
    folder = tmp_path_factory.mktemp("csv")
    header = ",".join(f"c{i}" for i in range(len(values)))
    payloads = load(folder, f"kind,{header}\ncampaign,{','.join(values)}\n")

    assert payloads == [{f"c{i}": value for i, value in enumerate(values)}]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "ref,kind,name\nc1,campaign,Spring, UK\n",
            "tasks.csv:2: 4 cells, but the header has 3 columns (a cell holding a comma "
            "needs double quotes)",
        ),
        (
            'ref,kind,name\nc1,campaign,"Spring\nc2,campaign,Summer\n',
            "tasks.csv:2: not valid CSV: unexpected end of data (a double quote is not closed)",
        ),
        (
            "ref,kind,name,name\nc1,campaign,Spring,Summer\n",
            "tasks.csv: column 'name' appears twice in the header",
        ),
        (
            "ref,kind,budget:int,budget\nc1,campaign,5,6\n",
            "tasks.csv: column 'budget' appears twice in the header",
        ),
    ],
)
def test_cells_the_header_cannot_place_are_refused_naming_the_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    """Such cells were dropped without a word: 'Spring, UK' unquoted became the name
    'Spring'; an unclosed quote swallowed every later row into one cell (row c2 vanished);
    of two columns for one field, the first was ignored."""
    path = tmp_path / "tasks.csv"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(errors.InvalidTask) as info:
        importer.load_file(path)

    assert str(info.value) == f"{tmp_path}/{problem}"


def test_a_quoted_cell_may_hold_commas_and_line_ends(tmp_path: Path) -> None:
    assert load(tmp_path, 'kind,name\ncampaign,"Spring, UK\nand IE"\n') == [
        {"name": "Spring, UK\nand IE"}
    ]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("tasks.csv", "ref,parent_ref,kind,name\nc1,,campaign,A\ng1,c1,ad_group,B\n"),
        (
            "tasks.json",
            '{"tasks": [{"kind": "campaign", "payload": {"name": "A"}, '
            '"children": [{"kind": "ad_group", "payload": {"name": "B"}}]}]}',
        ),
    ],
)
def test_a_file_saved_with_a_utf8_byte_order_mark_reads_like_one_without(
    tmp_path: Path, name: str, content: str
) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte order mark. It was read as part of
    the first column's name: a first column 'ref' went into the payload as '\\ufeffref'
    and every parent_ref was unknown, a first column 'kind' was "no 'kind' column"; a
    JSON file was "not valid JSON: Unexpected UTF-8 BOM"."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))

    items = importer.load_file(path)

    assert [(i.kind, i.payload, i.parent_index) for i in items] == [
        ("campaign", {"name": "A"}, None),
        ("ad_group", {"name": "B"}, 0),
    ]


def load_json_error(tmp_path: Path, text: str) -> str:
    """The one-line refusal of this JSON file's content."""
    path = tmp_path / "tasks.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(errors.InvalidTask) as info:
        importer.load_file(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (
            '{"kind": "ad_group", "id": 7}',
            "tasks[0].children[0].id: task ids are assigned by Sluice, not read from a file; a "
            'field the provider should receive goes in "payload"',
        ),
        (
            '{"kind": "ad_group", "ref": "g1"}',
            'tasks[0].children[0].ref: a JSON file places children under "children"; ref and '
            "parent_ref are CSV columns",
        ),
        (
            '{"kind": "ad_group", "priority": 5}',
            "tasks[0].children[0]: unknown key(s) priority; known: kind, payload, provider, "
            "children",
        ),
    ],
)
def test_a_key_a_json_task_does_not_take_is_refused_naming_where(
    tmp_path: Path, task: str, expected: str
) -> None:
    """An "id" (or a "ref") in a task object was ignored without a word, so the task got
    another id than the one written; every key the importer does not read is refused,
    naming the file and the task's place, and nothing is created."""
    text = load_json_error(
        tmp_path, '{"tasks": [{"kind": "campaign", "payload": {}, "children": [' + task + "]}]}"
    )

    assert text.startswith(f"{tmp_path / 'tasks.json'}: {expected}")
    assert "\n" not in text


def test_an_unknown_key_beside_the_tasks_is_refused(tmp_path: Path) -> None:
    """A file-level key other than provider and tasks (a misplaced "priority") was ignored."""
    text = load_json_error(tmp_path, '{"priority": 5, "tasks": [{"kind": "campaign"}]}')

    assert text == f"{tmp_path / 'tasks.json'}: unknown key(s) priority; known: provider, tasks"


def test_a_csv_id_column_is_a_payload_field(tmp_path: Path) -> None:
    """In a CSV file every column but ref, parent_ref, kind and provider is payload, id too."""
    assert load(tmp_path, "kind,id\ncampaign,42\n") == [{"id": "42"}]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "ref,parent_ref,kind,name\nc1,,campaign,A\n\n\nc2,,,B\n",
            "tasks.csv:5: kind is empty",
        ),
        (
            'ref,parent_ref,kind,name\nc1,,campaign,"Spring\nand\nSummer"\nc2,,,B\n',
            "tasks.csv:5: kind is empty",
        ),
        (
            'ref,kind,name,budget:int\r\nc1,campaign,"A\r\nB",1\r\n\r\nc2,campaign,C,x\r\n',
            "tasks.csv:5: column 'budget:int': 'x' is not a whole number",
        ),
    ],
)
def test_a_refused_row_is_named_by_the_line_where_it_begins(
    tmp_path: Path, text: str, problem: str
) -> None:
    """Rows were counted from line 2, so a blank line (skipped) or a quoted cell holding a
    line end shifted every later line number: an empty kind on line 5 was "line 3"."""
    path = tmp_path / "tasks.csv"
    path.write_bytes(text.encode("utf-8"))

    with pytest.raises(errors.InvalidTask) as info:
        importer.load_file(path)

    assert str(info.value) == f"{tmp_path}/{problem}"


def test_a_blank_line_and_a_short_row_read_as_before(tmp_path: Path) -> None:
    items = importer.load_file(_write(tmp_path, "ref,kind,name,bid:float\n\nc1,campaign\n\n"))

    assert [(i.kind, i.payload) for i in items] == [("campaign", {})]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tasks.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_path_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path: Path) -> None:
    """A FIFO was refused as "no such file" (it exists); a directory the same."""
    fifo = tmp_path / "tasks.json"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.csv"
    folder.mkdir()

    problems = []
    for path in (fifo, folder, tmp_path / "missing.json"):
        with pytest.raises(errors.InvalidTask) as info:
            importer.load_file(path)
        problems.append(str(info.value))

    assert problems == [
        f"{fifo}: not a regular file",
        f"{folder}: is a directory",
        f"{tmp_path}/missing.json: no such file",
    ]
