"""The defect review page (``inspector serve``): FastAPI + Jinja2 over the results database.

Only ``inspector.web.config`` is imported by the daemon's config parser; everything else needs the ``web`` extra.
"""
