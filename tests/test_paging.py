from bridge.paging import Pages


def _fetcher(items: list[int], total: int, size: int = 2):
    asked = []

    def fetch(offset: int) -> dict:
        asked.append(offset)
        return {"results": items[offset:offset + size], "paging": {"total": total}}
    return fetch, asked


def test_pages_move_on_by_the_items_read_until_the_total():
    fetch, asked = _fetcher(list(range(5)), total=5)
    pages = Pages(fetch, items=lambda page: page["results"])
    assert [batch for _page, batch in pages] == [[0, 1], [2, 3], [4]]
    assert asked == [0, 2, 4] and pages.complete


def test_an_empty_page_ends_the_list_even_when_the_total_says_more():
    fetch, asked = _fetcher([1, 2], total=9)
    assert [batch for _page, batch in Pages(fetch, items=lambda page: page["results"])] == [[1, 2], []]
    assert asked == [0, 2]


def test_the_page_limit_stops_early_and_says_the_list_is_incomplete():
    fetch, asked = _fetcher(list(range(10)), total=10)
    pages = Pages(fetch, items=lambda page: page["results"], max_pages=2)
    assert [batch for _page, batch in pages] == [[0, 1], [2, 3]]
    assert asked == [0, 2] and not pages.complete
