"""FlexiRoaster: YAML pipelines that run for real on DuckDB and polars, on one machine."""

__version__ = "0.1.0"
