"""The goal-driven export: the smallest (or fastest) model that passes the user's gates, searched per module
over precisions and factorisations (see ``search.search``)."""

from edgefold.exporter.search.search import SearchConfig, export_gated, search_export

__all__ = ["SearchConfig", "export_gated", "search_export"]
