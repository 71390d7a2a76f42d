"""The dashboard page: HTML, script and style, served as files (no CDN)."""
