"""Date formats the date prior reads (engramdb/derived/temporal.py): an app stores its dates
as it has them (ISO 8601, slashes, English text, Unix time); every form names the same day."""

from __future__ import annotations

from pathlib import Path

import pytest

import engramdb
from engramdb.derived.temporal import parse_day, query_dates

DAY = parse_day("2023-05-08")
SAME_DAY = ["2023/05/08", "2023.05.08", "20230508", "8-May-2023", "May-8-2023",
            "1:56 pm on 8 May, 2023", "Monday, May 8th, 2023", "2023-05-08T23:30:00",
            1683554160, 1683554160.5, 1683554160000, "1683554160"]


@pytest.mark.parametrize("value", SAME_DAY)
def test_every_form_names_the_same_day(value: object) -> None:
    assert parse_day(value) == DAY


@pytest.mark.parametrize("value", [42, True, "08/05/2023", "2023-05/08", "12345678",
                                   float("nan"), float("inf"), -1683554160, "2023"])
def test_what_is_no_date(value: object) -> None:
    # 42 is not 1970-01-01, a day-month order is ambiguous, mixed separators are no date.
    assert parse_day(value) is None


def test_queries_name_dates_in_the_new_forms() -> None:
    assert query_dates("What happened on 2023/05/08?").days == {DAY}
    assert query_dates("What happened on 8-May-2023?").days == {DAY}


def test_date_prior_with_unix_times(tmp_path: Path, encoder: object) -> None:
    """Dates given as numbers are read at write time and when the context is derived again
    from the catalog (which hands them back as text): the same days either way."""
    path = tmp_path / "m.engram"
    days = [1683554160, 1685620800, 1689854400]  # 2023-05-08, 2023-06-01, 2023-07-20 (UTC)
    with engramdb.open(path, encoder=encoder) as mem:
        for n, day in enumerate(days):
            mem.ingest(f"We baked bread together, batch {n}.", role="bob", session=f"s{n}",
                       metadata={"date": day})
        top = mem.recall("What did we bake on June 1, 2023?", top_k=1, associative=False)[0]
        assert top.text.endswith("batch 1.") and top.scores["date"] == 1.0
        live = mem.context.day[: mem.hot.capacity].tolist()
        mem.rebuild()  # derives the context again from the occurrences
        assert mem.context.day[: mem.hot.capacity].tolist() == live
