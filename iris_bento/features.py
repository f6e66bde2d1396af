"""The model's inputs and outputs, named once for training, serving and tests."""

from collections.abc import Mapping
from typing import Any, Final

from bentoml.exceptions import BentoMLException

MODEL_NAME: Final = "iris_clf"
FEATURE_NAMES: Final = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CLASS_NAMES: Final = ("setosa", "versicolor", "virginica")
# A plausible physical range for every measurement, in centimetres.
MIN_CM: Final = 0.0
MAX_CM: Final = 100.0
# The files inside a model store entry: the fitted pipeline, and, for a logistic regression, its
# arrays for the numpy path (see iris_bento.inference).
PIPELINE_FILE: Final = "pipeline.joblib"
LINEAR_FILE: Final = "softmax_linear.npz"


class ModelMismatch(BentoMLException):
    """The registered model takes other features than the service sends; BentoML's CLI prints it
    as one line and exits 1."""


def require_service_features(tag: str, metadata: Mapping[str, Any]) -> None:
    """Refuse a model trained on other features, or in another order, than `FEATURE_NAMES`."""
    trained = tuple(metadata.get("feature_names", FEATURE_NAMES))
    if trained != FEATURE_NAMES:
        raise ModelMismatch(
            f"{tag} was trained on features {list(trained)}, the service sends "
            f"{list(FEATURE_NAMES)}: serve a model registered by this project's train.py "
            "(IRIS_MODEL_TAG names the version)"
        )
