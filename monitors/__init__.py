"""Monitors: data profiles now; drift statistics and change detectors build on them."""
