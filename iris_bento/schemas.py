"""Request and response bodies. Validation happens here, before the model sees anything."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator
from pydantic_core import PydanticCustomError

from iris_bento.features import FEATURE_NAMES, MAX_CM, MIN_CM
from iris_bento.settings import project_settings

# A finite number in a plausible physical range: strict, so booleans, strings and nulls are
# rejected instead of coerced; NaN and Infinity are rejected too.
Measurement = Annotated[float, Field(strict=True, ge=MIN_CM, le=MAX_CM, allow_inf_nan=False)]
FeatureList = Annotated[list[Measurement], Field(min_length=4, max_length=4)]
MAX_REQUEST_ID: Final = 128
RequestId = Annotated[str, Field(strict=True, max_length=MAX_REQUEST_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NamedFeatures(_Strict):
    """Features by name, so a client cannot get their order wrong."""

    sepal_length: Measurement
    sepal_width: Measurement
    petal_length: Measurement
    petal_width: Measurement


# Tags of the two shapes of `features`, and of the two layouts of a V2 tensor's `data`; they
# appear in pydantic's error locations only, right after the field's name.
FEATURE_SHAPE_TAGS: Final = frozenset({"list", "object"})
TENSOR_LAYOUT_TAGS: Final = frozenset({"flat", "nested"})
UNION_TAGS: Final = {"features": FEATURE_SHAPE_TAGS, "data": TENSOR_LAYOUT_TAGS}


def _feature_shape(value: Any) -> str | None:
    """Validate against the shape the client sent, so errors name one shape, not both."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict | NamedFeatures):
        return "object"
    return None


Features = Annotated[
    Annotated[FeatureList, Tag("list")] | Annotated[NamedFeatures, Tag("object")],
    Discriminator(
        _feature_shape,
        custom_error_type="features_shape",
        custom_error_message="expected a list of four numbers or an object with the four names",
    ),
]


def _layout(value: Any) -> str | None:
    """Validate against the layout the client sent, so errors name one layout, not both."""
    if isinstance(value, list):
        return "nested" if value and isinstance(value[0], list) else "flat"
    return None


# A V2 tensor's elements: four measurements a row, flat or nested in row-major order.
TensorData = Annotated[
    Annotated[list[Measurement], Tag("flat")] | Annotated[list[FeatureList], Tag("nested")],
    Discriminator(
        _layout,
        custom_error_type="tensor_data",
        custom_error_message="expected the elements as a flat list, or nested in row-major order",
    ),
]


class PredictRequest(_Strict):
    """One record: an optional id, echoed back, and four measurements in centimetres."""

    id: RequestId | None = None
    features: Features = Field(
        description=f"four measurements in cm, as a list in the order {list(FEATURE_NAMES)} "
        "or as an object with those names",
        examples=[[5.1, 3.5, 1.4, 0.2]],
    )


class BatchPredictRequest(_Strict):
    """Several records, at most `limits.max_batch_items` of them."""

    items: list[PredictRequest] = Field(min_length=1)

    @field_validator("items", mode="before")
    @classmethod
    def _within_item_limit(cls, items: Any) -> Any:
        """Counted before any item is validated, so an oversized batch costs nothing."""
        limit = project_settings().limits.max_batch_items
        if isinstance(items, list) and len(items) > limit:
            raise PydanticCustomError(
                "too_many_items", "at most {limit} items per request", {"limit": limit}
            )
        return items


class Prediction(BaseModel):
    id: str | None
    label: str
    probability: float
    probabilities: dict[str, float]
    model_version: str


class BatchPrediction(BaseModel):
    results: list[Prediction]


class Health(BaseModel):
    status: str
    model: str
    model_version: str
    classes: list[str]
    features: list[str]


def feature_row(features: list[float] | NamedFeatures) -> list[float]:
    """The four measurements in the model's column order."""
    if isinstance(features, NamedFeatures):
        return [getattr(features, name) for name in FEATURE_NAMES]
    return features


def field_path(loc: Iterable[Any]) -> str:
    """A pydantic error location as `items[3].features[0]`; `body` for the body as a whole."""
    path, previous = "", None
    for part in loc:
        # Right after a union field: the branch pydantic took, not a field the client sent.
        is_shape_tag = part in UNION_TAGS.get(previous, ())
        previous = part
        if not is_shape_tag:
            path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


# A 400 lists this many problems at most, then how many more there were; a field name is cut
# to this length. A 1 MB body of 110,000 unknown fields had made a 6.6 MB answer.
MAX_ERROR_DETAILS: Final = 100
MAX_FIELD_CHARS: Final = 200


def validation_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """pydantic's errors as the contract's details: the field, as the client wrote it, and what
    is wrong with it."""
    details = [
        {
            "field": _shortened(field_path(error.get("loc", ()))),
            "message": error.get("msg", "invalid"),
        }
        for error in errors[:MAX_ERROR_DETAILS]
    ]
    if len(errors) > MAX_ERROR_DETAILS:
        unlisted = len(errors) - MAX_ERROR_DETAILS
        details.append({"field": "body", "message": f"{unlisted} more problems, not listed"})
    return details


def _shortened(field: str) -> str:
    return field if len(field) <= MAX_FIELD_CHARS else field[: MAX_FIELD_CHARS - 3] + "..."
