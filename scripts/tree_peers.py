"""The reference implementations for asterflow's tree models (issue 20): LightGBM's
multiclass booster and scikit-learn's RandomForestClassifier, fitted on the same rows with the
same rounds, depth and leaf size, timed, and scored on the same test rows.

    python scripts/tree_peers.py DIR ROUNDS LEARNING_RATE DEPTH MIN_LEAF TREES FOREST_DEPTH THREADS

DIR holds what `cargo bench --bench trees` (or a test) wrote: `train_x.f32`, `train_y.u8`,
`test_x.f32`, `test_y.u8` (row-major little-endian) and `meta.json` ({"features": F,
"classes": K}). Prints one JSON object: each peer's fit seconds, test accuracy and balanced
accuracy, and its test probabilities' file (`lightgbm.f32`, `forest.f32`) in DIR.
Install: pip install lightgbm==4.6.0 scikit-learn==1.7.2 (the venv `.ci/run` makes).
"""
import json
import os
import sys
import time

import numpy as np


def load(directory, name, dtype, width):
    data = np.fromfile(os.path.join(directory, name), dtype=dtype)
    return data.reshape(-1, width) if width > 1 else data


def scores(probabilities, y, classes):
    predicted = probabilities.argmax(axis=1)
    accuracy = float((predicted == y).mean())
    recalls = [float((predicted[y == k] == k).mean()) for k in range(classes) if (y == k).any()]
    return accuracy, float(np.mean(recalls))


def main():
    directory = sys.argv[1]
    rounds, rate, depth, min_leaf, trees, forest_depth, threads = (
        int(sys.argv[2]),
        float(sys.argv[3]),
        int(sys.argv[4]),
        int(sys.argv[5]),
        int(sys.argv[6]),
        int(sys.argv[7]),
        int(sys.argv[8]),
    )
    meta = json.load(open(os.path.join(directory, "meta.json")))
    features, classes = meta["features"], meta["classes"]
    train_x = load(directory, "train_x.f32", np.float32, features)
    train_y = load(directory, "train_y.u8", np.uint8, 1).astype(np.int32)
    test_x = load(directory, "test_x.f32", np.float32, features)
    test_y = load(directory, "test_y.u8", np.uint8, 1).astype(np.int32)
    out = {}

    if rounds > 0:
        import lightgbm

        params = {
            "objective": "multiclass",
            "num_class": classes,
            "learning_rate": rate,
            "max_depth": depth,
            "num_leaves": 2**depth,
            "min_data_in_leaf": min_leaf,
            "min_sum_hessian_in_leaf": 1e-3,
            "lambda_l2": 0.0,
            "max_bin": 255,
            "num_threads": threads,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }
        started = time.perf_counter()
        dataset = lightgbm.Dataset(train_x, label=train_y, free_raw_data=False)
        booster = lightgbm.train(params, dataset, num_boost_round=rounds)
        seconds = time.perf_counter() - started
        probabilities = booster.predict(test_x).astype(np.float32)
        probabilities.tofile(os.path.join(directory, "lightgbm.f32"))
        accuracy, balanced = scores(probabilities, test_y, classes)
        out["lightgbm"] = {
            "version": lightgbm.__version__,
            "fit_seconds": seconds,
            "accuracy": accuracy,
            "balanced_accuracy": balanced,
        }

    if trees > 0:
        import sklearn
        from sklearn.ensemble import RandomForestClassifier

        forest = RandomForestClassifier(
            n_estimators=trees,
            max_depth=forest_depth,
            min_samples_leaf=1,
            max_features="sqrt",
            bootstrap=True,
            n_jobs=threads,
            random_state=1,
        )
        started = time.perf_counter()
        forest.fit(train_x, train_y)
        seconds = time.perf_counter() - started
        probabilities = forest.predict_proba(test_x).astype(np.float32)
        probabilities.tofile(os.path.join(directory, "forest.f32"))
        accuracy, balanced = scores(probabilities, test_y, classes)
        out["sklearn_forest"] = {
            "version": sklearn.__version__,
            "fit_seconds": seconds,
            "accuracy": accuracy,
            "balanced_accuracy": balanced,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
