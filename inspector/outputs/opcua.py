"""OPC UA output: the line's PLCs read the station's results the way OPC 40100 (Machine Vision) describes.

One :class:`~inspector.outputs.base.Output` (config section ``opcua:``). Per committed result the dispatcher calls
``publish`` on the commit thread; that only appends the :class:`FrameResult` to a bounded buffer (oldest dropped
and counted when the server thread falls behind: a PLC fetches any result by id from the database, so nothing is
lost to a PLC, see below), with no system call, and the server thread takes the buffer every POLL_S. The asyncua
server runs on its own thread and event loop: it writes the camera's LastResult variables, raises one ResultReady event, serves
GetResultById / GetResultComponentsById from the database on a small thread pool (never on the loop, at most
``DB_SLOTS`` at once), and maps the station's health (``state_changed``) onto the vision state machine. No client,
slow or stuck, can make ``publish`` wait: clients are capped (connections, pending messages, subscriptions,
message size) and one that stops reading is disconnected once CLIENT_BACKLOG_BYTES wait for it.

Exactly-once, as on the bus: a result id is ``<bus session>:<sequence>``, gap-free per session and committed with
the frame. ``VisionSystem.Session`` and ``LastSequence`` tell a reconnecting PLC what it missed, and
``PreviousSession`` / ``PreviousLastSequence`` what the run before the last restart ended with; GetResultById
fetches each missed id from the database.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from asyncua import Server, ua
from asyncua.common.connection import TransportLimits
from sqlalchemy import select

from inspector.config import StationConfig
from inspector.db.models import ModelRecord
from inspector.outputs.base import OutputContext, StationState
from inspector.outputs.result import FrameResult
from inspector.outputs.session import load_result
from inspector.outputs.opcua_address_space import (ERROR_BAD_RESULT_ID, ERROR_BUSY, ERROR_DATABASE, ERROR_OK,
                                                   ERROR_UNKNOWN_RESULT, MachineVisionAddressSpace, ResultView,
                                                   VisionState, parse_result_id)
from inspector.outputs.opcua_security import (ClientTrustList, EncryptedOnlyServer, StationUserManager,
                                              application_uri, station_server_certificate)

log = logging.getLogger("inspector.opcua")

POLL_S = 0.01  # the server thread takes pending results this often (publish never wakes it: see publish)
STATE_PERIOD_S = 0.25  # and refreshes the state machine / checks for clients that stopped reading this often
EXECUTING_HOLD_S = 2.0  # ContinuousExecution this long after the last result (no flapping between frames)
DB_SLOTS = 4  # concurrent GetResult database reads; more answer Error=-4 (busy) at once
CLIENT_BACKLOG_BYTES = 8 << 20  # unread bytes queued for one client before it is disconnected
START_TIMEOUT_S = 300.0  # the standard address space alone is ~3 s of CPU; a loaded machine is slower
POLICIES = {"Aes256_Sha256_RsaPss": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
            "Aes128_Sha256_RsaOaep": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            "Basic256Sha256": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}


def vision_state(station: StationState | None, stopping: bool, recent_result: bool) -> VisionState:
    """Station health -> OPC 40100 state machines: not told yet (starting) = Preoperational, stopping = Halted,
    inspection unavailable (detector or database down) = Error with the reason, else Operational:
    ContinuousExecution while results come (or came a moment ago), Ready while it waits for the next frame."""
    if stopping:
        return VisionState("Halted", "Initialized")
    if station is None:
        return VisionState("Preoperational", "Initialized")
    if not station.inspection_available:
        return VisionState("Error", "Initialized", "; ".join(f"{k}: {v}" for k, v in sorted(station.problems.items())))
    return VisionState("Operational", "ContinuousExecution" if recent_result else "Ready")


@dataclass
class OutputStats:
    published: int = 0  # results handed to publish()
    shown: int = 0  # results written to the address space and raised as events
    dropped: int = 0  # results dropped from a full buffer (still in the database)
    failed: int = 0  # results the server thread could not show (logged)
    lookups: int = 0  # GetResult calls answered
    disconnected: int = 0  # clients dropped for not reading


class OpcUaOutput:
    """The OPC UA server of one station (see the module docstring)."""

    name = "opcua"

    def __init__(self, cfg: StationConfig) -> None:
        self.cfg = cfg
        self.settings = cfg.opcua
        self.application_uri = application_uri(cfg.station)
        self.stats = OutputStats()
        self.bound_endpoint: str | None = None
        self.certificate_thumbprint: str | None = None
        self._pending: deque[FrameResult] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._station: StationState | None = None
        self._stopping = False
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last_result_at = 0.0
        self._class_names: dict[int, list[str]] = {}  # model id -> its classes (ClassNames/ClassCounts order)
        self.space: MachineVisionAddressSpace | None = None
        self.server: Server | None = None

    @classmethod
    def from_config(cls, cfg: StationConfig) -> "OpcUaOutput":
        return cls(cfg)

    # -- lifecycle (daemon thread) ----------------------------------------------------------------------------
    def start(self, context: OutputContext, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server thread and wait until it listens; a bind or certificate error is raised here."""
        self.context = context
        self._thread = threading.Thread(target=self._run, name="opcua-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"OPC UA server did not start within {timeout:.0f} s on {self.settings.endpoint}")
        if self._error is not None:
            self._thread.join(5.0)
            raise RuntimeError(f"OPC UA server cannot start on {self.settings.endpoint}: "
                               f"{type(self._error).__name__}: {self._error}") from self._error
        log.info("OPC UA server listening", extra={"fields": {
            "endpoint": self.bound_endpoint, "application_uri": self.application_uri,
            "policies": self.settings.security_policies, "certificate_thumbprint": self.certificate_thumbprint}})

    def stop(self, timeout: float = 10.0) -> None:
        """Show Halted, close the sessions, stop the thread."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake_loop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("OPC UA server thread did not stop in time")
        self._thread = None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- producer (commit thread): never blocks ---------------------------------------------------------------
    def publish(self, result: FrameResult) -> None:
        """Queue one committed result for the server thread."""
        with self._lock:
            self.stats.published += 1
            if len(self._pending) >= self.settings.result_queue:
                self._pending.popleft()
                self.stats.dropped += 1
            self._pending.append(result)
        # No wake-up here: waking the loop is a socket write, a system call that releases the GIL to the server
        # thread just woken by it, and the commit thread would wait for the GIL (up to the 5 ms switch interval)
        # in the middle of its commit. The server thread polls every POLL_S instead.

    def state_changed(self, state: StationState) -> None:
        self._station = state
        self._wake_loop()

    def _wake_loop(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop has closed (server stopped or crashed): results stay in the database
            pass

    # -- server thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged, never lost
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                log.exception("OPC UA server thread failed")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        server = await self._make_server()
        self._db = ThreadPoolExecutor(2, thread_name_prefix="opcua-db")
        self._db_slots = asyncio.Semaphore(DB_SLOTS)
        try:
            await server.start()
            parts = urlsplit(self.settings.endpoint)  # port 0 (tests): the kernel picked one
            port = server.bserver.port if server.bserver is not None else parts.port
            self.bound_endpoint = f"opc.tcp://{parts.hostname}:{port}{parts.path}"
            self._started.set()
            await self._serve()
        finally:
            await server.stop()
            self._db.shutdown(wait=False, cancel_futures=True)

    async def _make_server(self) -> Server:
        s = self.settings
        own = station_server_certificate(self.cfg)
        self.certificate_thumbprint = own.thumbprint
        users = StationUserManager(s.users, s.certificate_users, s.allow_anonymous)
        iserver = EncryptedOnlyServer(user_manager=users)
        iserver.max_connections = s.max_sessions
        iserver.max_subscriptions = 4 * s.max_sessions
        iserver.max_pending_messages_per_connection = 64
        iserver.max_pending_activation_seconds = 10.0
        iserver.max_session_timeout_ms = 120_000
        iserver.max_monitored_item_queue_size = 1000
        iserver.max_unacked_messages_per_subscription = 1000
        server = Server(iserver=iserver)
        server.limits = TransportLimits(max_recv_buffer=65535, max_send_buffer=65535, max_chunk_count=64,
                                        max_message_size=4 << 20)
        await server.init()
        server.set_endpoint(s.endpoint)
        server.set_server_name(f"rddn-inspector {self.cfg.station}")
        server.product_uri = "urn:rddn-inspector"
        server.manufacturer_name = "rddn-inspector"
        server.application_type = ua.ApplicationType.Server
        await server.set_application_uri(self.application_uri)
        await server.load_certificate(str(own.certificate))
        await server.load_private_key(str(own.private_key))
        server.set_security_policy([POLICIES[p] for p in s.security_policies])
        tokens: list[type] = []
        if s.users:
            tokens.append(ua.UserNameIdentityToken)
        if s.certificate_users:
            tokens.append(ua.X509IdentityToken)
        if s.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        self.trust_list = ClientTrustList(self.cfg.opcua_pki_dir, s.trust_all_clients)
        server.set_certificate_validator(self.trust_list)
        space = MachineVisionAddressSpace(server, self.cfg.station, [c.id for c in self.cfg.cameras])
        await space.build(self.context.session, self._get_result_by_id, self._get_result_components_by_id)
        await space.show_state(self._state())
        self.server, self.space = server, space
        return server

    async def _serve(self) -> None:
        assert self._wake is not None and self.space is not None
        next_state = 0.0
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except TimeoutError:
                pass
            woken = self._wake.is_set()  # by state_changed or stop
            self._wake.clear()
            await self._show_pending()
            if woken or time.monotonic() >= next_state:
                await self.space.show_state(self._state())
                self._drop_stuck_clients()
                next_state = time.monotonic() + STATE_PERIOD_S
        await self._show_pending()
        await self.space.show_state(self._state())

    async def _show_pending(self) -> None:
        assert self.space is not None
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        for result in batch:
            try:
                classes = await self._classes(result)
                await self.space.show_result(ResultView.from_result(result), classes)
                self.stats.shown += 1
                self._last_result_at = time.monotonic()
                await asyncio.sleep(0)  # let subscriptions publish and other requests run between results
            except Exception:  # noqa: BLE001 - one result that cannot be shown must not stop the server
                self.stats.failed += 1
                log.exception("OPC UA server cannot show a result", extra={"fields": {"result": result.result_id}})

    async def _classes(self, result: FrameResult) -> list[str]:
        """The class list of the result's model (from the models table, once per model): what ClassNames holds
        and ClassCounts counts, in the model's order, zeros included, so a PLC can index a fixed array."""
        model_id = result.model.id if result.model is not None else -1
        if model_id not in self._class_names:
            try:
                self._class_names[model_id] = await asyncio.get_running_loop().run_in_executor(
                    self._db, self._load_classes, model_id)
            except Exception as exc:  # noqa: BLE001 - database away: the result's own labels, asked again next time
                log.warning("OPC UA: model classes unavailable", extra={"fields": {"error": str(exc).splitlines()[0]}})
                return []
        return self._class_names[model_id]

    def _load_classes(self, model_id: int) -> list[str]:
        with self.context.factory() as db:
            names = db.scalar(select(ModelRecord.class_names).where(ModelRecord.id == model_id))
        return list(names or [])

    def _state(self) -> VisionState:
        return vision_state(self._station, self._stopping, time.monotonic() - self._last_result_at < EXECUTING_HOLD_S)

    def _drop_stuck_clients(self) -> None:
        assert self.server is not None
        for transport in list(self.server.iserver.asyncio_transports):
            if transport.get_write_buffer_size() > CLIENT_BACKLOG_BYTES:
                self.stats.disconnected += 1
                log.warning("OPC UA client does not read its responses; disconnected", extra={"fields": {
                    "peer": str(transport.get_extra_info("peername")), "backlog": transport.get_write_buffer_size()}})
                transport.abort()

    # -- ResultManagement methods (server loop) ---------------------------------------------------------------
    async def _lookup(self, args: tuple[ua.Variant, ...]) -> tuple[FrameResult | None, list[str], int] | ua.StatusCode:
        """The result a GetResult call names, the class list of its model, and the 40100 Error value."""
        if len(args) != 2:
            return ua.StatusCode(ua.StatusCodes.BadArgumentsMissing if len(args) < 2
                                 else ua.StatusCodes.BadTooManyArguments)
        if args[0].VariantType != ua.VariantType.String or args[1].VariantType != ua.VariantType.Int32:
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        self.stats.lookups += 1
        try:
            session, seq = parse_result_id(args[0].Value)
        except ValueError:
            return None, [], ERROR_BAD_RESULT_ID
        if self._db_slots.locked():
            return None, [], ERROR_BUSY
        async with self._db_slots:
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._db, load_result, self.context.factory, session, seq)
                classes = await self._classes(result) if result is not None else []
            except Exception as exc:  # noqa: BLE001 - the database is down or locked: say so, keep serving
                log.error("GetResult: database unavailable", extra={"fields": {"error": str(exc).splitlines()[0]}})
                return None, [], ERROR_DATABASE
        return (result, classes, ERROR_OK) if result is not None else (None, [], ERROR_UNKNOWN_RESULT)

    async def _get_result_by_id(self, parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
        found = await self._lookup(args)
        if isinstance(found, ua.StatusCode):
            return found
        result, _classes, error = found
        return [ua.Variant(0, ua.VariantType.UInt32), ua.Variant(result.to_json() if result else "", ua.VariantType.String),
                ua.Variant(error, ua.VariantType.Int32)]

    async def _get_result_components_by_id(self, parent: ua.NodeId,
                                           *args: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
        found = await self._lookup(args)
        if isinstance(found, ua.StatusCode):
            return found
        result, classes, error = found
        assert self.space is not None
        values = self.space.variants(ResultView.from_result(result) if result is not None else None, classes)
        return [ua.Variant(0, ua.VariantType.UInt32), *values, ua.Variant(error, ua.VariantType.Int32)]
