"""`streamfit check`: a stream's spec and a sample of its events tried before anything is deployed.

`specs` checks spec files one by one (schema, estimator parameters, the data-quality suite) so that
one broken file names itself instead of stopping the code location; `backtest` runs a sample file
through the product's own parse, feature, data-quality, test-then-train and ONNX steps, with no
broker, so a user sees what Streamfit would learn from their data and what it would refuse.
"""
