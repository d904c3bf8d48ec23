"""The inspection daemon: drop folders -> templates -> detection -> database + ZeroMQ alarm bus.

Never imports training code or torch at module level: it runs compiled artifacts.

OpenCV reads its decode limits once, when cv2 is imported: they are set here, before any inspector module
imports cv2, to the daemon's pixel budget (``inspector.pipeline.MAX_FRAME_PIXELS``), the backstop behind the
header checks of ``inspector.imageformat`` for any format OpenCV decodes. Its own log is kept to errors (the
daemon's journal is JSON; ``inspector run`` also wraps any native stderr line as JSON).
"""
import os as _os

MAX_FRAME_PIXELS = 100_000_000
for _key, _value in (("OPENCV_IO_MAX_IMAGE_PIXELS", MAX_FRAME_PIXELS), ("OPENCV_IO_MAX_IMAGE_WIDTH", 1 << 16),
                     ("OPENCV_IO_MAX_IMAGE_HEIGHT", 1 << 16), ("OPENCV_LOG_LEVEL", "ERROR")):
    _os.environ.setdefault(_key, str(_value))
