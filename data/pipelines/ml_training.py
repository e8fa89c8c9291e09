"""Python stages of the ML Model Training sample: load the wine data, train, evaluate.

Each function is `fn(inputs: dict[str, polars.DataFrame], params: dict) -> polars.DataFrame`.
Placeholders in `params` arrive as text, so numbers are converted here.
"""

from __future__ import annotations

import re

import polars as pl


def load_wine_dataset(inputs: dict[str, pl.DataFrame], params: dict) -> pl.DataFrame:
    """The UCI wine recognition data that ships inside scikit-learn: 178 wines, 13 measurements."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    # `od280/od315_of_diluted_wines` is no SQL identifier; name every column as SQL likes it.
    names = [re.sub(r"[^a-z0-9]+", "_", n.lower()).strip("_") for n in wine.feature_names]
    frame = pl.DataFrame({name: wine.data[:, i] for i, name in enumerate(names)})
    return frame.with_columns(
        pl.Series("cultivar", [str(wine.target_names[t]) for t in wine.target]),
    ).with_row_index("sample_id")


def train_classifier(inputs: dict[str, pl.DataFrame], params: dict) -> pl.DataFrame:
    """Fit a scaled logistic regression on a stratified split; return the held-out predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = inputs["features"].sort("sample_id")
    target = params.get("target", "cultivar")
    features = [c for c in data.columns if c not in ("sample_id", target)]
    x = data.select(features).to_numpy()
    y = data[target].to_numpy()
    ids = data["sample_id"].to_numpy()
    seed = int(params["random_state"])
    x_train, x_test, y_train, y_test, _, id_test = train_test_split(
        x, y, ids, test_size=float(params["test_size"]), stratify=y, random_state=seed
    )
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=float(params.get("c", 1.0)), max_iter=2000, random_state=seed),
    )
    model.fit(x_train, y_train)
    proba = model.predict_proba(x_test)
    predicted = model.classes_[proba.argmax(axis=1)]
    return pl.DataFrame(
        {
            "sample_id": id_test,
            "actual": y_test,
            "predicted": predicted,
            "confidence": proba.max(axis=1).round(4),
        }
    ).sort("sample_id")


def evaluate(inputs: dict[str, pl.DataFrame], params: dict) -> pl.DataFrame:
    """Accuracy, macro precision / recall / F1 and per-class recall of the held-out predictions."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    pred, features = inputs["train"], inputs["features"]
    target = params.get("target", "cultivar")
    actual, predicted = pred["actual"].to_list(), pred["predicted"].to_list()
    precision, recall, f1, _ = precision_recall_fscore_support(
        actual, predicted, average="macro", zero_division=0
    )
    labels = sorted(set(actual))
    _, per_class_recall, _, support = precision_recall_fscore_support(
        actual, predicted, labels=labels, zero_division=0
    )
    rows = [
        ("accuracy", accuracy_score(actual, predicted)),
        ("precision_macro", precision),
        ("recall_macro", recall),
        ("f1_macro", f1),
        ("test_rows", len(actual)),
        ("train_rows", features.height - pred.height),
        ("features_used", len([c for c in features.columns if c not in ("sample_id", target)])),
    ]
    rows += [(f"recall_{label}", r) for label, r in zip(labels, per_class_recall, strict=True)]
    rows += [(f"support_{label}", s) for label, s in zip(labels, support, strict=True)]
    return pl.DataFrame(
        {
            "run_id": params["run_id"],
            "model": params.get("model_name", "model"),
            "metric": [m for m, _ in rows],
            "value": [round(float(v), 6) for _, v in rows],
        }
    )
