"""The model's inputs and outputs, named once for training, serving and tests."""

from typing import Final

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
