"""Configs made of parts: each stage reads its own part, while the command line, the catalog and
the JSON files written before the parts existed keep giving every setting by its flat name."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.fields import FieldInfo


class StagedConfig(BaseModel):
    """A frozen config whose fields of a config type are its parts.

    ``Config(depth=3)`` and ``Config.model_validate(old_flat_json)`` put each flat setting into
    the part that holds it; ``FLAT_NAMES`` renames a part's field where its flat name differs
    (``task_runner`` -> ``execution.runner``). Flat names are unique across the parts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    FLAT_NAMES: ClassVar[dict[str, tuple[str, str]]] = {}  # flat name -> (part, field)

    @classmethod
    def parts(cls) -> dict[str, type[BaseModel]]:
        """Part name -> its config class."""
        return {
            name: field.annotation
            for name, field in cls.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        }

    @classmethod
    def flat_fields(cls) -> dict[str, FieldInfo]:
        """Every setting by its flat name (the command line's flags), parts' fields included."""
        renamed = {where: flat for flat, where in cls.FLAT_NAMES.items()}
        fields: dict[str, FieldInfo] = {}
        for name, field in cls.model_fields.items():
            part = cls.parts().get(name)
            if part is None:
                fields[name] = field
                continue
            for inner, inner_field in part.model_fields.items():
                fields[renamed.get((name, inner), inner)] = inner_field
        return fields

    @classmethod
    def _locations(cls) -> dict[str, tuple[str, str]]:
        where = {}
        for name, part in cls.parts().items():
            for inner in part.model_fields:
                where[inner] = (name, inner)
        for flat, (part, inner) in cls.FLAT_NAMES.items():
            where.pop(inner, None)
            where[flat] = (part, inner)
        return where

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler) -> dict[str, Any]:
        """The JSON schema (Prefect checks deployment parameters against it) admits every
        setting by its flat name too, as ``prefect.yaml`` gives them; pydantic checks their
        values when the flow starts."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        for flat, field in cls.flat_fields().items():
            schema["properties"].setdefault(flat, {"description": field.description or flat})
        return schema

    @model_validator(mode="before")
    @classmethod
    def _gather_flat(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        where = cls._locations()
        data = dict(data)
        for flat in [key for key in data if key in where and key not in cls.model_fields]:
            part, inner = where[flat]
            given = data.get(part) or {}
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            data[part] = {**given, inner: data.pop(flat)}
        return data

    def flat(self, mode: str = "python") -> dict[str, Any]:
        """Every setting by its flat name, as ``model_dump(mode=mode)`` gives values. The
        JSON records of a run (``config.json``, ``model.json``, the checkpoint state, the
        lineage) hold this form: the settings by the names the command line gives them."""
        dump = self.model_dump(mode=mode)
        values = {name: dump[name] for name in self.model_fields if name not in self.parts()}
        for flat, (part, inner) in self._locations().items():
            values[flat] = dump[part][inner]
        return values

    def given(self) -> set[str]:
        """The flat names of the settings given explicitly (pydantic's ``model_fields_set`` over
        the parts)."""
        names = {name for name in self.model_fields_set if name not in self.parts()}
        for flat, (part, inner) in self._locations().items():
            if part in self.model_fields_set and inner in getattr(self, part).model_fields_set:
                names.add(flat)
        return names

    def updated(self, **flat: Any) -> Self:
        """This config with some settings replaced by flat name, validated again."""
        unknown = sorted(set(flat) - set(self.flat_fields()))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no setting {', '.join(unknown)}")
        return type(self).model_validate({**self.flat(), **flat})
