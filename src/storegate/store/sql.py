"""SQL both stores share: the tag rows of a completion and the ordered list walk.

Each filter (a model, or one metadata key=value) is a row in completion_tags, so a list is one
ordered walk of that table's primary key, joined to the completions it names.
"""

from collections.abc import Callable
from typing import Any

from storegate.store.base import ListQuery

MODEL = "m"
META = "k"

Tag = tuple[str, str, str, str, str]


def tags(project: str, cid: str, models: set[str], metadata: dict[str, str]) -> list[Tag]:
    rows: list[Tag] = [(project, MODEL, "", model, cid) for model in sorted(models)]
    rows += [(project, META, key, value, cid) for key, value in metadata.items()]
    return rows


def _same(text: str) -> Any:
    return text


def list_sql(
    q: ListQuery, placeholder: Callable[[int], str], encode: Callable[[str], Any] = _same
) -> tuple[str, list[Any]]:
    """The page query (limit + 1 rows, to learn has_more). `placeholder(n)` spells parameter n
    (1-based); `encode` turns a tag's name and value into the type its columns hold."""
    params: list[Any] = []

    def p(value: Any) -> str:
        params.append(value)
        return placeholder(len(params))

    filters = [(kind, encode(name), encode(value)) for kind, name, value in (
        ([(MODEL, "", q.model)] if q.model is not None else []) + [(META, k, v) for k, v in sorted(q.metadata.items())]
    )]  # fmt: skip
    if not filters:
        sql = f"SELECT c.id, c.body, c.metadata FROM completions c WHERE c.project = {p(q.project)}"
        key = "c.id"
    else:
        joins = "".join(
            f" JOIN completion_tags t{i} ON t{i}.project = t0.project AND t{i}.kind = {p(kind)}"
            f" AND t{i}.name = {p(name)} AND t{i}.value = {p(value)} AND t{i}.id = t0.id"
            for i, (kind, name, value) in enumerate(filters[1:], start=1)
        )
        kind, name, value = filters[0]
        sql = (
            f"SELECT c.id, c.body, c.metadata FROM completion_tags t0{joins} JOIN completions c ON c.id = t0.id"
            f" WHERE t0.project = {p(q.project)} AND t0.kind = {p(kind)} AND t0.name = {p(name)}"
            f" AND t0.value = {p(value)}"
        )
        key = "t0.id"
    if q.after is not None:
        sql += f" AND {key} {'>' if q.order == 'asc' else '<'} {p(q.after)}"
    if q.id_from is not None:
        sql += f" AND {key} >= {p(q.id_from)}"
    if q.id_before is not None:
        sql += f" AND {key} < {p(q.id_before)}"
    sql += f" ORDER BY {key} {q.order.upper()} LIMIT {p(q.limit + 1)}"
    return sql, params
