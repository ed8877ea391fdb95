"""The hand-written event constructors match the dataclass fields they stand for."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing

import pytest

from dbproxy import speedups
from dbproxy.protocol import events

EVENT_CLASSES = [
    obj
    for obj in vars(events).values()
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and obj.__module__ == events.__name__
]


def _source_annotations() -> dict[str, dict[str, object]]:
    """Field types read from events.py itself (a compiled class keeps no unions)."""
    source = (speedups.SOURCE_ROOT / "dbproxy" / "protocol" / "events.py").read_text()
    namespace = {"Protocol": events.Protocol, "ServerError": events.ServerError}
    by_class: dict[str, dict[str, object]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            own: dict[str, object] = {}
            for base in node.bases:
                if isinstance(base, ast.Name):
                    own.update(by_class.get(base.id, {}))
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    own[item.target.id] = eval(ast.unparse(item.annotation), namespace)
            by_class[node.name] = own
    return by_class


def _value(hint: object, i: int) -> object:
    """A distinct value of the annotated type (compiled classes check types)."""
    args = typing.get_args(hint)
    if hint is int:
        return 1000 + i
    if hint is str:
        return f"value-{i}"
    if hint is bool:
        return bool(i % 2)
    if typing.get_origin(hint) is typing.Literal:
        return args[0]
    if typing.get_origin(hint) is tuple:
        return (i, i + 1)
    if type(None) in args:  # X | None
        return _value(next(a for a in args if a is not type(None)), i)
    if hint is events.ServerError:
        return events.ServerError(severity="ERROR", sqlstate="23505", message=f"m{i}")
    raise AssertionError(f"no test value for {hint!r}")


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_constructor_takes_every_field_by_keyword_and_sets_it(cls: type) -> None:
    fields = dataclasses.fields(cls)
    params = inspect.signature(vars(cls)["__init__"]).parameters
    # compiled classes expose (*args, **kwargs); the keyword call below still checks them
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        assert [p for p in params if p != "self"] == [f.name for f in fields]
        assert all(params[f.name].kind is inspect.Parameter.KEYWORD_ONLY for f in fields)
    hints = _source_annotations()[cls.__name__]
    values = {f.name: _value(hints[f.name], i) for i, f in enumerate(fields)}
    event = cls(**values)
    for name, value in values.items():
        assert getattr(event, name) == value, name
    assert dataclasses.replace(event) == event
    assert not hasattr(event, "__dict__")  # slotted
