"""Sensors: the Kafka backlog sensor that launches training runs."""
