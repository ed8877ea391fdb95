"""The web UI's static files (package data served by ``dbproxy.export.http``)."""
