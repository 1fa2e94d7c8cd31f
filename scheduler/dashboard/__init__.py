"""The scheduler's web dashboard, served at ``/`` of its address: the calls, one call
whole, the actions on it, an overview; server-rendered (Jinja2, autoescaped), its
templates and assets shipped in the package."""

from .pages import Dashboard

__all__ = ["Dashboard"]
