"""Per-stream training assets, built from stream specs by factories."""
