"""Streamfit: keep scikit-learn models learning from Kafka micro-batches, orchestrated by Dagster."""

__version__ = "0.1.0"
