"""Where results leave the station: every output behind one interface.

- ``result.py``: :class:`FrameResult`, the one type of a committed frame result (and the alarm it raises);
  its JSON Schema is ``schemas/frame-result.schema.json``.
- ``base.py``: the :class:`Output` protocol (start / publish / state_changed / stop) and what outputs get.
- ``dispatcher.py``: :class:`OutputDispatcher`, what the pipeline calls once per committed result.
- ``session.py``: bus sessions and the gap-free result/alarm sequences, assigned in the commit transaction.
- ``zeromq.py`` (+ ``zeromq_replay.py``): the ZeroMQ bus (XPUB topics, paged replay endpoint).
- ``opcua.py`` (+ ``opcua_address_space.py``, ``opcua_security.py``): an OPC UA server for PLCs, a subset of
  OPC 40100 Machine Vision (ResultReady events, GetResultById from the database); needs the ``opcua`` extra.

A new channel (MQTT Sparkplug, say) is one new module with a class that implements :class:`Output`, plus one
entry in :func:`build_outputs` reading its config section.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from inspector.outputs.base import Output, OutputContext, SessionInfo, StationState
from inspector.outputs.dispatcher import OutputDispatcher
from inspector.outputs.result import SCHEMA_VERSION, AlarmMessage, FrameResult, Verdict

if TYPE_CHECKING:
    from inspector.config import StationConfig

__all__ = ["SCHEMA_VERSION", "AlarmMessage", "FrameResult", "Output", "OutputContext", "OutputDispatcher",
           "SessionInfo", "StationState", "Verdict", "build_outputs"]


def build_outputs(cfg: "StationConfig") -> OutputDispatcher:
    """The station's outputs, in the order they get each result: the ZeroMQ bus always, others when configured."""
    from inspector.outputs.zeromq import ZeroMQOutput

    outputs: list[Output] = [ZeroMQOutput.from_config(cfg.bus)]
    if cfg.opcua.enabled:
        try:
            from inspector.outputs.opcua import OpcUaOutput
        except ImportError as exc:
            raise RuntimeError(f"opcua.enabled needs the opcua extra (pip install 'rddn-inspector[opcua]'): "
                               f"{exc}") from exc
        outputs.append(OpcUaOutput.from_config(cfg))
    return OutputDispatcher(outputs)
