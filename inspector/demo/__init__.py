"""The demo station (``inspector demo``): synthetic camera frames, a demo model when installed, a live alarm tail."""
