"""Results database: typed ORM models, engine/session factory, Alembic migrations run at start."""
from inspector.db.migrate import upgrade_database
from inspector.db.models import (Alarm, Base, BusSession, Camera, DetectionRow, Frame, FrameReview, ModelRecord,
                                 ResultRow, ReviewEvent, Station, Template)
from inspector.db.session import make_engine, make_session_factory

__all__ = ["Alarm", "Base", "BusSession", "Camera", "DetectionRow", "Frame", "FrameReview", "ModelRecord", "ResultRow",
           "ReviewEvent", "Station", "Template", "make_engine", "make_session_factory", "upgrade_database"]
