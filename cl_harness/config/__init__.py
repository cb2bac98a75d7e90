"""Schemas and loading of stream and experiment YAML files."""
