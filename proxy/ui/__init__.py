"""The run viewer: static pages (static/), served by proxy/api/ui.py, that call the runs API."""
