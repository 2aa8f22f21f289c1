"""Modules a training run imports, loaded once in the warm forkserver (see warm_runs.py).

Each import here is one the steps would otherwise pay in every run (FACTS.md: great_expectations
2.5-4.7 s, skl2onnx 1.7 s, scikit-learn 1.25 s in a fresh process).
"""

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations  # noqa: E402,F401
import great_expectations.expectations  # noqa: E402,F401
import joblib  # noqa: E402,F401
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401
import pandas  # noqa: E402,F401
import scipy.stats  # noqa: E402,F401
import skl2onnx  # noqa: E402,F401
import sklearn.linear_model  # noqa: E402,F401
import sklearn.neural_network  # noqa: E402,F401
import sklearn.preprocessing  # noqa: E402,F401
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402,F401
