"""Fit the peers' model, the same kind as the project's, and dump it with joblib.

Run inside each peer's venv (`python -m bench.model OUT`) so the pickle matches the
scikit-learn that loads it.
"""

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 42


def fit() -> Pipeline:
    """StandardScaler + LogisticRegression on sklearn's bundled Iris, seed 42, stratified 80/20."""
    features, target = load_iris(return_X_y=True)
    x_train, _, y_train, _ = train_test_split(
        features, target, test_size=0.2, stratify=target, random_state=SEED
    )
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)


if __name__ == "__main__":
    joblib.dump(fit(), Path(sys.argv[1]))
