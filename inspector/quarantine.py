"""Why a frame was not inspected: the reason codes of quarantine, one documented enumeration.

Every quarantined frame carries exactly one code, in its database row (``frames.reason_code``), in the
``.reason.json`` beside the quarantined file (``kind``), in the ``rddn_frames_total``/quarantine counters, and on
the pipeline's ``FrameOutcome.reason_kind``, which is what the outputs publish as the NOT_INSPECTED reason. The
codes are stable strings: PLC programs and dashboards switch on them. docs/operations.md lists them too.
"""
from __future__ import annotations

from enum import Enum


class QuarantineReason(str, Enum):
    """Reason codes of frames that were not inspected (the value is the wire/database string)."""

    # -- the file itself ---------------------------------------------------------------------------------------
    EMPTY = "empty"                  # zero bytes, and it stayed so for ``incomplete_after_s``
    INCOMPLETE = "incomplete"        # not whole (no end marker / shorter than its header declares) and no growth
    #                                  for ``incomplete_after_s``
    CORRUPT = "corrupt"              # whole as far as its format can tell, but not decodable (or not an image)
    TOO_LARGE = "too_large"          # header declares more pixels than the decode limit, or the file is too big
    SYMLINK = "symlink"              # a symbolic link: never followed, never read, the link itself removed
    NOT_REGULAR = "not_regular"      # a FIFO, socket or device node named like a frame: never opened
    HARDLINK = "hardlink"            # several hard links while the kernel does not protect hard links
    #                                  (fs.protected_hardlinks=0): not read (with the protection on, it is read
    #                                  and stored as a copy, see docs/operations.md)
    # -- its name ----------------------------------------------------------------------------------------------
    BAD_NAME = "bad_name"            # does not match the camera pattern, or a field (position, serial, timestamp,
    #                                  the name itself) is too long, not UTF-8, or has control characters
    # -- the station's state -----------------------------------------------------------------------------------
    NO_TEMPLATE = "no_template"      # the model needs a template and the position has no active one
    WRONG_SIZE = "wrong_size"        # frame size differs from the position's active template
    DETECTOR_TIMEOUT = "detector_timeout"  # the frame hung the detector repeatedly (a poison frame)
    DB_REJECTED = "db_rejected"      # the database refused the frame's row (a data or integrity error)
    ERROR = "error"                  # a processing stage raised an unexpected error on this frame

    def __str__(self) -> str:
        return self.value


class Quarantine(Exception):
    """Raised inside the pipeline to send the frame to quarantine with ``kind`` and a human message."""

    def __init__(self, kind: QuarantineReason, message: str) -> None:
        super().__init__(message)
        self.kind = QuarantineReason(kind)
        self.message = message
