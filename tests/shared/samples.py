"""One valid instance of every message type, built from its schema (new types are covered too)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import inspect as mi

from shared.messages import MESSAGE_TYPES, Message


def sample_value(t: mi.Type) -> Any:
    if isinstance(t, mi.StrType):
        return "x"
    if isinstance(t, mi.BoolType):
        return True
    if isinstance(t, mi.IntType):
        return 7
    if isinstance(t, mi.FloatType):
        return 1.25
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, mi.ListType | mi.TupleType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        item = t.item_type if hasattr(t, "item_type") else t.item_types[0]
        return [sample_value(item)]
    if isinstance(t, mi.DictType):
        return {"k": sample_value(t.value_type)}
    if isinstance(t, mi.StructType):
        return sample_struct(t.cls)
    if isinstance(t, mi.UnionType):
        return sample_value(next(x for x in t.types if not isinstance(x, mi.NoneType)))
    if isinstance(t, mi.AnyType):
        return 1
    if isinstance(t, mi.BytesType):
        return b"x"
    raise NotImplementedError(f"no sample for {t!r}")


def sample_struct(cls: type[Any]) -> Any:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    kwargs = {f.name: sample_value(f.type) for f in info.fields if f.required}
    return msgspec.convert(kwargs, cls) if False else cls(**kwargs)


def every_message() -> list[Message]:
    return [sample_struct(t) for t in MESSAGE_TYPES]
