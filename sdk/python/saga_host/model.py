"""Typed models: fields declared as class annotations, checked and converted when set.

`Model` is the base of `Aggregate`, `AggregateRef` and the classes `ModelType.build` makes.
A field's annotation says what a value may be and how JSON turns back into it: `UUID` accepts a
UUID or its text, `ModelRef[User]` holds the referenced uuid, `list[int]` checks each item,
`Optional[...]` (or a default) lets a field be left out. Annotations the SDK does not know
(`Any`, your own classes) take any value.
"""

import copy
import types
import typing
from uuid import UUID

from .errors import InvalidFieldException

_NO_DEFAULT = object()


class _RefType:
    """What `ModelRef[Target]` stands for: a field holding the uuid of a `Target`."""

    def __init__(self, target):
        self.target = target

    def __repr__(self) -> str:
        return f"ModelRef[{getattr(self.target, '__name__', self.target)}]"


class ModelRef:
    """`ModelRef[User]`: a reference to another aggregate, held as its uuid. Given a model with a
    `uuid` (an aggregate, an `AggregateRef`), the field keeps the uuid."""

    def __class_getitem__(cls, target):
        return _RefType(target)


def _allows_none(annotation) -> bool:
    if annotation is typing.Any or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)


def convert(value, annotation, where: str):
    """`value` as a field of type `annotation` holds it; `where` ("Exam.user_uuid") names the
    field in the `InvalidFieldException` raised when it does not fit."""
    if annotation is typing.Any:
        return value
    if value is None:
        if _allows_none(annotation):
            return None
        raise InvalidFieldException(f"{where} needs a value ({_type_name(annotation)}), not None")
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        for option in options:
            try:
                return convert(value, option, where)
            except InvalidFieldException:
                continue
        names = " or ".join(_type_name(option) for option in options)
        raise InvalidFieldException(f"{where}: {value!r:.80} is not a {names}")
    if isinstance(annotation, _RefType):
        return convert(getattr(value, "uuid", value), UUID, where)
    if annotation is UUID:
        if isinstance(value, UUID):
            return value
        if isinstance(value, str):
            try:
                return UUID(value)
            except ValueError:
                pass
        raise InvalidFieldException(f"{where}: {value!r:.80} is not a UUID")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        # bool is an int in Python, but not in JSON.
        if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
            return value
        raise InvalidFieldException(f"{where}: {value!r:.80} is not a {annotation.__name__}")
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise InvalidFieldException(f"{where}: {value!r:.80} is not a list")
        arguments = typing.get_args(annotation)
        item = arguments[0] if arguments else typing.Any
        return [convert(entry, item, f"{where}[{i}]") for i, entry in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise InvalidFieldException(f"{where}: {value!r:.80} is not an object")
        arguments = typing.get_args(annotation)
        item = arguments[1] if len(arguments) == 2 else typing.Any
        return {key: convert(entry, item, f"{where}.{key}") for key, entry in value.items()}
    if isinstance(annotation, type) and issubclass(annotation, Model):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict):
            return annotation.from_json(value, where)
        raise InvalidFieldException(f"{where}: {value!r:.80} is not a {annotation.__name__}")
    return value


class Model:
    """A record with typed fields: `class Point(Model): x: int; y: int = 0`.

    Build it with positional arguments in field order or by keyword; every value is converted
    (see `convert`) and so is every later assignment to a field. `dict(model)` and the JSON the
    SDK sends are the fields by name.
    """

    # Names a subclass may not use as fields (Aggregate adds its metadata).
    _reserved_names: frozenset = frozenset()

    def __init__(self, *args, **kwargs):
        fields = type(self).fields()
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} has {len(fields)} fields, got {len(args)} values")
        values = dict(zip(fields, args))
        for name, value in kwargs.items():
            if name not in fields:
                raise TypeError(f"{type(self).__name__} has no field {name!r}; its fields: {', '.join(fields)}")
            if name in values:
                raise TypeError(f"{type(self).__name__}: {name!r} given twice")
            values[name] = value
        self._set_fields(values, missing_ok=False)

    def _set_fields(self, values: dict, missing_ok: bool) -> None:
        cls = type(self)
        for name, (annotation, default) in cls.fields().items():
            if name in values:
                value = values[name]
            elif default is not _NO_DEFAULT:
                value = copy.copy(default)
            elif missing_ok or _allows_none(annotation):
                value = None
            else:
                raise InvalidFieldException(f"{cls.__name__}.{name} is required")
            object.__setattr__(self, name, convert(value, annotation, f"{cls.__name__}.{name}"))

    def __setattr__(self, name, value):
        field = type(self).fields().get(name)
        if field is not None:
            value = convert(value, field[0], f"{type(self).__name__}.{name}")
        object.__setattr__(self, name, value)

    @classmethod
    def fields(cls) -> dict:
        """The fields by name: (annotation, default). Resolved once per class, so that
        annotations may name classes defined later in the module (`ModelRef[User]`)."""
        resolved = cls.__dict__.get("_model_fields")
        if resolved is None:
            resolved = {}
            for name, annotation in typing.get_type_hints(cls).items():
                if name.startswith("_") or typing.get_origin(annotation) is typing.ClassVar:
                    continue
                if name in cls._reserved_names:
                    raise TypeError(f"{cls.__name__}.{name}: {name!r} is reserved; name the field otherwise")
                resolved[name] = (annotation, getattr(cls, name, _NO_DEFAULT))
            type.__setattr__(cls, "_model_fields", resolved)
        return resolved

    @classmethod
    def from_json(cls, data: dict, where: str | None = None):
        """A model from its JSON object; fields it lacks are None or their default, unknown keys
        are ignored."""
        model = cls.__new__(cls)
        try:
            model._set_fields(data, missing_ok=True)
        except InvalidFieldException as error:
            raise InvalidFieldException(f"{where}: {error.message}" if where else error.message) from None
        return model

    def __json__(self) -> dict:
        return {name: getattr(self, name) for name in type(self).fields()}

    # dict(model), model["field"]: the Mapping protocol over the JSON object.
    def keys(self):
        return self.__json__().keys()

    def __getitem__(self, name):
        return self.__json__()[name]

    def __iter__(self):
        return iter(self.__json__())

    def __len__(self) -> int:
        return len(self.__json__())

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.__json__() == self.__json__()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__json__().items())
        return f"{type(self).__name__}({fields})"


class AggregateRef(Model):
    """Another service's aggregate as this one refers to it (Minos's `AggregateRef`): its uuid,
    and whatever fields the subclass declares."""

    uuid: UUID


class ModelType:
    """Minos's `ModelType.build("AttemptQuery", {"user": UUID, "exam": UUID})`: a `Model` class
    made from a name and its fields' types."""

    @staticmethod
    def build(name: str, fields: dict) -> type:
        return types.new_class(name, (Model,), {}, lambda namespace: namespace.update(__annotations__=dict(fields)))
