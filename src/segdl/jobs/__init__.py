"""Orchestration above the engines and the sources: a request, its flow, and the manager."""
