"""The broker: listeners, the connection registry, session lifetimes and wills.

Theory of operation
-------------------
``Broker.serve`` binds the listeners, reports the addresses through
``task_status`` and accepts until ``shutdown`` is set. Plain TCP connections
are accepted on the bare listening socket and run ``Connection.run`` as one
task of the connections nursery, where their writer and ack tasks also start
while they have work (no nursery per connection: an idle connection costs one
task). Other streams (TLS, memory streams in tests) go through
``serve_stream``, which gives each its own small nursery. On shutdown the broker stops accepting,
tells every connection SERVER_SHUTTING_DOWN (v5 DISCONNECT 0x8B, 3.1.1 close)
after its pending forwards finished, and returns once all are closed.

Session lifetimes and delayed wills are timers in one housekeeping task: a
heap of deadlines checked at least once a second. A timer carries the
session's ``epoch`` so a session resumed in the meantime is left alone.

Takeover: a CONNECT for a client id that is connected ends the old connection
(v5 DISCONNECT 0x8E, v5 [MQTT-3.1.4-3], v311 [MQTT-3.1.4-2]) and waits for it
to close before the session is resumed or replaced. A client id taken over
more than ``takeover_flap_limit`` times in 10 s waits ``takeover_flap_delay``,
doubling per extra takeover up to 10 s, before it gets the session.

Memory of sessions: at most ``max_sessions`` exist (connected and offline);
a CONNECT that would create one more is refused (v5 CONNACK 0x97, 3.1.1
return code 3), checked before authentication (no argon2 for a refused
client) and again, without a wait in between, when the session is created.
A client id with a session (resume, takeover, Clean Start replacing it) is
never refused. All their queues share one byte budget (``queue_budget``,
``max_queued_bytes``); a discarded session gives its bytes back
(``_end_session``). Per device (``device_quotas``, pure, in
protocol/session.py): at most ``max_sessions_per_device`` persistent
sessions, checked once the device is known (after authentication, before
any takeover) and again when the session is opened, and a share
``max_queued_bytes_per_device`` of the byte budget, so one device cannot take
what all devices share. Anonymous clients are not counted per device. A
session (and its client id) belongs to the device that created it
(``owned_by_other``); deleting the device discards its sessions.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import secrets
import socket
from collections.abc import Callable
from typing import Any

import attrs
import trio

from mqttgate.auth import Authenticator, Identity
from mqttgate.broker.connection import OTHER_DEVICES_CLIENT_ID, Connection
from mqttgate.broker.delivery import Overload, SessionHandle
from mqttgate.broker.router import LocalRouter
from mqttgate.broker.stats import BrokerStats, ClientInfo
from mqttgate.config import Config
from mqttgate.forward import Forwarder, ForwardMessage, NullForwarder
from mqttgate.logs import get_logger
from mqttgate.protocol.packets import Will
from mqttgate.protocol.reasons import ReasonCode
from mqttgate.protocol.session import (
    ConnectPlan,
    DeviceQuotas,
    Limits,
    Message,
    QueueBudget,
    Session,
)

log = get_logger("broker")

_FLAP_WINDOW = 10.0
_FLAP_MAX_DELAY = 10.0
#: Seconds between two ``session_limit_reached`` warnings.
_SESSION_LIMIT_LOG_INTERVAL = 10.0
#: Seconds between two checks of the connections' read deadlines: keep alive
#: and connect timeouts fire up to this late.
_DEADLINE_CHECK = 0.5
#: Connections accepted in a row before the accept loop lets others run.
_ACCEPT_BATCH = 64
#: accept() errors that mean "out of resources, try again shortly" (trio's list).
_ACCEPT_CAPACITY_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)


#: Reason sent (v5 DISCONNECT) to the live sessions of a changed device; 3.1.1
#: connections are closed. Deleted or disabled (or the table truncated): the
#: device is no longer allowed in (0x87 Not authorized). Rotated: the
#: credential the session was opened with has been superseded; the device is
#: expected to come back with the new one, so 0x8E (Session taken over).
REVOCATION_REASONS = {
    "delete": ReasonCode.NOT_AUTHORIZED,
    "disable": ReasonCode.NOT_AUTHORIZED,
    "rotate": ReasonCode.SESSION_TAKEN_OVER,
    "truncate": ReasonCode.NOT_AUTHORIZED,
}


def limits_from(config: Config) -> Limits:
    return Limits(
        max_packet_size=config.max_packet_size,
        receive_maximum=config.receive_maximum,
        max_inflight=config.max_inflight,
        max_queued_messages=config.max_queued_messages,
        max_topic_length=config.max_topic_length,
        max_topic_levels=config.max_topic_levels,
        max_subscriptions=config.max_subscriptions,
        max_client_id_length=config.max_client_id_length,
        max_session_expiry=int(config.max_session_expiry),
        max_keepalive=config.max_keepalive,
        topic_alias_maximum=config.topic_alias_maximum,
    )


@attrs.define
class _PendingWill:
    epoch: int
    will: Will
    identity: Identity
    acl: Any


class Broker:
    def __init__(self, config: Config, authenticator: Authenticator, forwarder: Forwarder) -> None:
        self.config = config
        self.authenticator = authenticator
        self.forwarder = forwarder
        #: False with forwarding off: the hot path skips building ForwardMessages.
        self.forwarding = not isinstance(forwarder, NullForwarder)
        self.stats = BrokerStats()
        #: Bound once: the module's lazy proxy binds anew on every call, which
        #: the per-connection events cannot afford (made after logs.configure).
        self.log = log.bind()
        self.limits = limits_from(config)
        #: Bytes queued in all sessions (``Session.enqueue``/``dequeue``).
        self.queue_budget = QueueBudget(config.max_queued_bytes)
        #: Sessions and queued bytes per device (``max_*_per_device``).
        self.device_quotas = DeviceQuotas(
            self.queue_budget,
            max_sessions=config.max_sessions_per_device,
            max_bytes=config.max_queued_bytes_per_device,
        )
        #: ``session_limit_reached`` is logged at most once per
        #: _SESSION_LIMIT_LOG_INTERVAL and limit (a full broker under a connect
        #: storm, or one device retrying, would flood the log); limit ->
        #: [time of the last warning, refusals not logged since].
        self._session_limit_log: dict[str, list[float]] = {}
        self.router = LocalRouter(
            self.stats,
            max_retained=config.max_retained_messages,
            max_retained_bytes=config.max_retained_bytes,
        )
        self.shutting_down = False
        #: The daemon's shutdown deadline (set at shutdown): closing
        #: connections (shielded from the cancellation) write their DISCONNECT
        #: and linger until then at most.
        self.shutdown_deadline = math.inf
        #: Congested sessions publishers wait for (overload control, broker/delivery.py).
        self.overload = Overload(config.max_publisher_pause)
        #: Connections with unsent output, flushed at the end of the read
        #: batch that produced it (see Connection.write).
        self.dirty: list[Connection] = []
        #: True while a read loop runs a batch: writes wait for its flush.
        self.batching = False
        #: One receive buffer for every plain TCP connection: data is copied
        #: into the connection's decoder at once, so no idle connection keeps one.
        self.rbuf = bytearray(65536)
        self.rview = memoryview(self.rbuf)
        self._conns: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._timer_seq = itertools.count()
        self._flaps: dict[str, list[float]] = {}
        self._closed_events: dict[int, trio.Event] = {}
        self._pending_wills: dict[str, _PendingWill] = {}

    # ------------------------------------------------------------ serving

    async def serve(
        self,
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listen = self.config.mqtt_listen
        listeners = await trio.open_tcp_listeners(listen.port, host=listen.host, backlog=4096)
        addresses = []
        for listener in listeners:
            host, port = listener.socket.getsockname()[:2]
            addresses.append(f"mqtt://[{host}]:{port}" if ":" in host else f"mqtt://{host}:{port}")
        log.info("mqtt_listening", addresses=addresses)
        async with trio.open_nursery() as outer:
            outer.start_soon(self._housekeeping)
            async with trio.open_nursery() as conns:
                async with trio.open_nursery() as accept:
                    accept.start_soon(self._accept, listeners, conns)
                    if self.config.mqtts_listen is not None:  # MQTT over TLS: mqttgate/tls.py
                        from mqttgate.tls import serve_tls

                        addresses = addresses + await accept.start(serve_tls, self.config, self.serve_stream, conns)
                    task_status.started(addresses)
                    await shutdown.wait()
                    accept.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
                self.shutting_down = True
                self.shutdown_deadline = trio.current_time() + self.config.shutdown_timeout
                log.info("mqtt_draining", connections=len(self._conns))
                for conn in list(self._conns.values()):
                    conn.kick(ReasonCode.SERVER_SHUTTING_DOWN)
            outer.cancel_scope.cancel()
        log.info("mqtt_stopped")

    @property
    def acks_deadline(self) -> float:
        """When draining connections stop waiting for their pending forwards,
        so that their DISCONNECT (0x8B) still goes out before the shutdown
        deadline: a quarter of the timeout, at most 1 s, before it."""
        return self.shutdown_deadline - min(1.0, self.config.shutdown_timeout / 4)

    async def _accept(self, listeners: list[trio.SocketListener], conns: trio.Nursery) -> None:
        # Plain TCP connections are served on the bare socket (Connection.sock):
        # no SocketStream, no trio socket wrapper, fewer frames per idle
        # connection, and CONNECT..CONNACK without a task switch per step.
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_raw, socket.socket(fileno=listener.socket.detach()), conns)

    async def _accept_raw(self, lsock: socket.socket, conns: trio.Nursery) -> None:
        lsock.setblocking(False)
        try:
            accepted = 0
            while True:
                try:
                    sock, addr = lsock.accept()
                except BlockingIOError:
                    accepted = 0
                    await trio.lowlevel.wait_readable(lsock)
                    continue
                except OSError as error:
                    if error.errno in _ACCEPT_CAPACITY_ERRNOS:
                        log.error("accept_failed", error=repr(error))
                        await trio.sleep(0.1)
                    continue
                sock.setblocking(False)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:  # not TCP (tests), or already gone
                    pass
                if self.shutting_down or self._too_many_pending():
                    sock.close()
                    continue
                conn_id = next(self._ids)
                conn = Connection(self, None, conn_id, f"{addr[0]}:{addr[1]}", sock)
                self._conns[conn_id] = conn
                conns.start_soon(conn.run, conns)
                accepted += 1
                if accepted >= _ACCEPT_BATCH:
                    accepted = 0
                    await trio.lowlevel.checkpoint()
        finally:
            trio.lowlevel.notify_closing(lsock)
            lsock.close()

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        await self.serve_stream(stream, peer)

    async def crashed(self, conn: Connection, error: Exception) -> None:
        """A bug ended ``conn``: log it, close it, keep the broker running."""
        log.error(
            "connection_crashed", conn_id=conn.conn_id, client_id=conn.client_id, error=repr(error), exc_info=True
        )
        conn.close_transport()
        if conn.sock is None:
            with trio.CancelScope(shield=True):
                await conn.stream.aclose()
        if conn.connected:
            self.connection_closed(conn)

    def forget(self, conn: Connection) -> None:
        self._conns.pop(conn.conn_id, None)

    def _too_many_pending(self) -> bool:
        """Connections that have not finished CONNECT are unauthenticated and
        may each buffer up to max_packet_size: cap their number."""
        if len(self._conns) - self.stats.connections_current < self.config.max_pending_connects:
            return False
        self.stats.connections_refused += 1
        return True

    async def serve_stream(self, stream: Any, peer: str) -> None:
        """Serve one client on any trio stream (tests use memory streams)."""
        if self._too_many_pending():
            await stream.aclose()
            return
        conn_id = next(self._ids)
        conn = Connection(self, stream, conn_id, peer)
        self._conns[conn_id] = conn
        try:
            if self.shutting_down:
                await stream.aclose()
                return
            async with trio.open_nursery() as nursery:
                await conn.run(nursery)
        finally:
            self._conns.pop(conn_id, None)

    # ------------------------------------------------------------ public API

    def clients(self) -> list[ClientInfo]:
        return [
            ClientInfo(
                client_id=conn.client_id,
                device_id=conn.identity.device_id,
                mqtt_user=conn.identity.mqtt_user,
                peer=conn.peer,
                protocol_version=int(conn.version),
                connected_at=conn.connected_at,
                inflight=len(conn.handle.session.inflight) if conn.handle else 0,
                subscriptions=len(conn.handle.session.subscriptions) if conn.handle else 0,
            )
            for conn in self._conns.values()
            if conn.connected
        ]

    def kick(self, client_id: str, reason: ReasonCode = ReasonCode.ADMINISTRATIVE_ACTION) -> bool:
        """Disconnect a client (v5: DISCONNECT with ``reason``; 3.1.1: close)."""
        target = self.router.target(client_id)
        conn = target.conn if isinstance(target, SessionHandle) else None
        if conn is None:
            return False
        log.info(
            "client_kicked", conn_id=conn.conn_id, client_id=client_id,
            device_id=conn.identity.device_id, reason=reason.name,
        )
        conn.kick(reason)
        return True

    def kick_device(
        self, device_id: str | None, reason: ReasonCode = ReasonCode.ADMINISTRATIVE_ACTION
    ) -> int:
        """Disconnect every live connection of a device (None: of every
        device, anonymous clients excepted); returns how many."""
        kicked = 0
        for conn in list(self._conns.values()):
            if conn.close_reason is not None:
                continue
            owner = conn.identity.device_id
            if owner is None or (device_id is not None and owner != device_id):
                continue
            log.info(
                "client_kicked", conn_id=conn.conn_id, client_id=conn.client_id,
                device_id=owner, reason=reason.name,
            )
            conn.kick(reason)
            # Authenticated but not connected yet: waiting in take_over (the
            # flap throttle, the old connection's close). Cut too, or it would
            # open a session after the revocation and stay connected. It has
            # no session: not counted.
            kicked += 1 if conn.connected else 0
        return kicked

    def revoke_device(self, device_id: str | None, change: str) -> int:
        """The one path that ends a changed device's live sessions here.

        Called by the API right after its commit (this replica's changes)
        and by :meth:`device_revoked` for the store's notifications of other
        writers' changes (never for this replica's own, see store.py), so a
        change cuts each replica's sessions once. ``change`` is "delete",
        "disable", "rotate" or "truncate" (``device_id`` None: every device);
        the reason is :data:`REVOCATION_REASONS`'s. Returns how many.

        A deleted device's sessions go with it: the offline ones now, the
        ones of the connections being cut when they close (their expiry set
        to 0). Its queued messages have no reader left, and its client ids
        become free. A Will still waiting for its delay is due when its
        session ends (v5 [MQTT-3.1.2-8]), so it is published then, as a cut
        connection's Will is. A disabled or rotated device keeps its
        sessions: it is expected back.
        """
        kicked = self.kick_device(device_id, REVOCATION_REASONS[change])
        if change in ("delete", "truncate"):
            self._discard_sessions(device_id)
        return kicked

    def _discard_sessions(self, device_id: str | None) -> None:
        for client_id in self.device_quotas.client_ids(device_id):
            target = self.router.target(client_id)
            if not isinstance(target, SessionHandle):
                continue
            target.session.expiry = 0
            if target.conn is None:
                # As at expiry (_expire): the session ends, its delayed Will is due.
                self._end_session(client_id, target)
                pending = self._pending_wills.pop(client_id, None)
                if pending is not None:
                    self._publish_will(client_id, pending)

    def device_revoked(self, change: str, device_id: str | None) -> None:
        """RevocationWatcher (mqttgate/store.py): another replica, or a direct
        SQL change, deleted, disabled or rotated a device."""
        closed = self.revoke_device(device_id, change)
        # Every replica hears every change: info only where sessions were cut.
        if closed:
            log.info("device_revoked_remotely", device_id=device_id, change=change, sessions_closed=closed)
        else:
            log.debug("device_revoked_remotely", device_id=device_id, change=change, sessions_closed=0)

    # ------------------------------------------------------------ sessions

    def owned_by_other(self, client_id: str, device_id: str | None) -> bool:
        """True if ``client_id`` has a session, or a Will waiting for its
        delay, that another device (or an anonymous client, for a device;
        a device, for an anonymous client) created.

        Client ids are chosen by the clients, so without this any device
        knowing another's client id could take over its session: kick it,
        receive what its subscriptions queued, and read its traffic (the
        original gateway's flaw). Only the session's own device may resume
        it, take it over or replace it with Clean Start; others get 0x85 /
        rc 2 (docs/broker.md "Client identifiers").
        """
        target = self.router.target(client_id)
        if isinstance(target, SessionHandle) and target.session.owner != device_id:
            return True
        pending = self._pending_wills.get(client_id)
        return pending is not None and pending.identity.device_id != device_id

    async def take_over(self, conn: Connection, client_id: str) -> None:
        """End any live connection of ``client_id`` and wait until it is closed."""
        first = True
        while True:
            target = self.router.target(client_id)
            old = target.conn if isinstance(target, SessionHandle) else None
            if old is None or old is conn:
                return
            if self.owned_by_other(client_id, conn.identity.device_id):
                # Another device created the session while this one waited
                # (flap throttle, the old connection's close): never kick it;
                # open_session refuses this CONNECT (owned_by_other).
                return
            if first:
                first = False
                delay = self._flap_delay(client_id)
                if delay:
                    log.info(
                        "takeover_throttled", conn_id=conn.conn_id, client_id=client_id,
                        device_id=conn.identity.device_id, delay_s=delay,
                    )
                    await trio.sleep(delay)
                    continue
            old.taken_over = True
            old.kick(ReasonCode.SESSION_TAKEN_OVER)
            self.stats.takeovers += 1
            log.info(
                "session_taken_over", conn_id=conn.conn_id, old_conn_id=old.conn_id, client_id=client_id,
                device_id=conn.identity.device_id,
            )
            event = self._closed_events.setdefault(old.conn_id, trio.Event())
            with trio.move_on_after(5.0):
                await event.wait()

    def _flap_delay(self, client_id: str) -> float:
        now = trio.current_time()
        times = [t for t in self._flaps.get(client_id, ()) if now - t < _FLAP_WINDOW]
        times.append(now)
        self._flaps[client_id] = times
        excess = len(times) - self.config.takeover_flap_limit
        if excess <= 0:
            return 0.0
        return float(min(self.config.takeover_flap_delay * 2 ** (excess - 1), _FLAP_MAX_DELAY))

    def session_limit_reached(self, conn: Connection, client_id: str) -> str | None:
        """``"max_sessions"`` if a new session for ``client_id`` would pass
        the broker's session limit, else None (also when ``client_id`` has a
        session: resuming, taking over or replacing one is never refused by
        this limit). Checked before authentication too (a refused client
        costs no argon2 verify). Logs ``session_limit_reached``; the caller
        refuses the CONNECT, which also logs ``connect_denied``.
        """
        held, cap = self.stats.sessions_count, self.config.max_sessions
        if held < cap or self.router.target(client_id) is not None:
            return None
        self._log_session_limit(conn, client_id, "max_sessions", held, cap)
        return "max_sessions"

    def device_limit_reached(self, conn: Connection, client_id: str, persistent: bool) -> str | None:
        """``"max_sessions_per_device"`` if ``conn``'s device would hold one
        persistent session more than its cap (a new persistent session, or a
        session that only now gets an expiry), else None."""
        quotas = self.device_quotas
        device_id = conn.identity.device_id
        if not persistent or quotas.is_persistent(client_id) or not quotas.full(device_id):
            return None
        limit = "max_sessions_per_device"
        self._log_session_limit(conn, client_id, limit, quotas.persistent(device_id), quotas.max_sessions)
        return limit

    def _log_session_limit(self, conn: Connection, client_id: str, limit: str, held: int, cap: int) -> None:
        """``session_limit_reached``, at most once per 10 s and limit, with
        the number of refusals not logged since: a device retrying at its
        cap does not hide the broker filling up."""
        now = trio.current_time()
        state = self._session_limit_log.setdefault(limit, [-math.inf, 0])
        if now < state[0] + _SESSION_LIMIT_LOG_INTERVAL:
            state[1] += 1
            return
        log.warning(
            "session_limit_reached",
            conn_id=conn.conn_id,
            client_id=client_id,
            device_id=conn.identity.device_id,
            limit=limit,
            sessions=held,
            suppressed=int(state[1]),
            **{limit: cap},
        )
        state[0], state[1] = now, 0

    def _end_session(self, client_id: str, handle: SessionHandle) -> None:
        """Discard a session: out of the router, its queued bytes back to the budget."""
        self.router.detach(client_id, handle)
        handle.session.end()
        self.device_quotas.detach(client_id)

    def open_session(
        self, conn: Connection, plan: ConnectPlan, *, clean: bool
    ) -> tuple[SessionHandle, bool] | str:
        """Resume or create the session of ``conn``; returns it and Session
        Present, or the limit a new session would pass (``max_sessions``,
        ``max_sessions_per_device``), or that another device owns it."""
        client_id = plan.client_id
        target = self.router.target(client_id)
        handle = target if isinstance(target, SessionHandle) else None
        device_id = conn.identity.device_id
        if self.owned_by_other(client_id, device_id):
            # Checked before the takeover too; again here because that
            # takeover may have waited (flap throttle) while another device
            # created the session.
            return OTHER_DEVICES_CLIENT_ID
        if handle is None:
            refused = self.session_limit_reached(conn, client_id)
            if refused is not None:
                return refused
        persistent = plan.session_expiry > 0
        # Checked before the takeover; again here in case it waited.
        refused = self.device_limit_reached(conn, client_id, persistent)
        if refused is not None:
            return refused
        pending = self._pending_wills.pop(client_id, None)
        if handle is not None and clean:
            # v5 [MQTT-3.1.2-4], v311 [MQTT-3.1.2-6]: Clean Start discards the old session.
            self._end_session(client_id, handle)
            if pending is not None:
                # The old session ends now, so its delayed Will is due (v5 section 3.1.3.2.2).
                self._publish_will(client_id, pending)
            handle = None
        if handle is None:
            session = Session(
                client_id,
                secrets.token_hex(8),
                max_queued=self.config.max_queued_messages,
                expiry=plan.session_expiry,
                budget=self.device_quotas.attach(client_id, device_id, persistent=persistent),
                owner=device_id,
            )
            handle = SessionHandle(
                session, self.stats, self.config.max_outbox_bytes, trio.current_time, self.overload
            )
            self.router.attach(client_id, handle)
            present = False
        else:
            handle.session.expiry = plan.session_expiry
            if persistent:
                self.device_quotas.make_persistent(client_id)
            present = True
        handle.epoch += 1
        handle.conn = conn
        self.stats.connections_current += 1
        return handle, present

    def connection_closed(self, conn: Connection) -> None:
        """Called once by every connection as it closes."""
        event = self._closed_events.pop(conn.conn_id, None)
        if event is not None:
            event.set()
        handle = conn.handle
        if handle is None or not conn.connected:
            return
        conn.connected = False
        self.stats.connections_current -= 1
        if conn.close_reason is not None:
            reason = conn.close_reason.name
        else:
            reason = "connection_lost" if conn.abnormal else "client_disconnect"
        self.log.info(
            "client_disconnected", conn_id=conn.conn_id, client_id=conn.client_id,
            device_id=conn.identity.device_id, reason=reason,
        )
        if handle.conn is not conn:
            return
        handle.conn = None
        handle.detached()
        client_id = conn.client_id
        session = handle.session
        will = conn.will if conn.abnormal and not self.shutting_down else None
        pending = _PendingWill(handle.epoch, will, conn.identity, conn.acl) if will is not None else None
        if session.expiry == 0:
            self._end_session(client_id, handle)
            if pending is not None:
                self._publish_will(client_id, pending)
            return
        now = trio.current_time()
        self.schedule(now + session.expiry, self._expire, handle, handle.epoch)
        if pending is not None:
            delay = pending.will.properties.will_delay_interval or 0
            if delay == 0:
                self._publish_will(client_id, pending)
            else:
                # v5 section 3.1.3.2.2: at the end of the delay or of the session.
                self._pending_wills[client_id] = pending
                self.schedule(now + min(delay, session.expiry), self._will_due, handle, handle.epoch)

    def _expire(self, handle: SessionHandle, epoch: int) -> None:
        client_id = handle.session.client_id
        if handle.epoch != epoch or handle.conn is not None or self.router.target(client_id) is not handle:
            return
        log.debug("session_expired", client_id=client_id, device_id=handle.session.owner)
        self._end_session(client_id, handle)
        pending = self._pending_wills.pop(client_id, None)
        if pending is not None:
            self._publish_will(client_id, pending)

    def _will_due(self, handle: SessionHandle, epoch: int) -> None:
        client_id = handle.session.client_id
        pending = self._pending_wills.get(client_id)
        if pending is None or pending.epoch != epoch or handle.conn is not None:
            return
        del self._pending_wills[client_id]
        self._publish_will(client_id, pending)

    def _publish_will(self, client_id: str, pending: _PendingWill) -> None:
        will = pending.will
        if pending.acl is not None and not pending.acl.may_publish(will.topic):
            self.stats.publish_denied += 1
            log.info("will_denied", client_id=client_id, device_id=pending.identity.device_id, topic=will.topic)
            return
        props = will.properties
        if props.will_delay_interval is not None:
            props = attrs.evolve(props, will_delay_interval=None)
        now = trio.current_time()
        expiry = props.message_expiry_interval
        message = Message(
            will.topic, will.payload, will.qos, will.retain, props, client_id,
            None if expiry is None else now + expiry,
        )
        self.stats.wills_published += 1
        log.debug("will_published", client_id=client_id, device_id=pending.identity.device_id, topic=will.topic)
        if will.retain:
            self.router.retain(message)
        self.router.publish(message)
        if self.forwarding:
            identity = pending.identity
            forwarded = ForwardMessage(
                topic=will.topic, payload=will.payload, qos=will.qos, retain=will.retain,
                client_id=client_id, device_id=identity.device_id,
                device_type=identity.device_type, mqtt_user=identity.mqtt_user, properties=props,
            )
            if not self.forwarder.submit_nowait(forwarded):
                self.stats.forward_dropped += 1

    # ------------------------------------------------------------ output

    def flush(self) -> None:
        """Send what every dirty connection has buffered (see Connection.flush)."""
        dirty = self.dirty
        while dirty:
            self.dirty = []
            for conn in dirty:
                conn.flush()
            dirty = self.dirty

    # ------------------------------------------------------------ timers

    def schedule(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_seq), callback, args))

    async def _housekeeping(self) -> None:
        timers = self._timers
        last_prune = trio.current_time()
        while True:
            now = trio.current_time()
            while timers and timers[0][0] <= now:
                _, _, callback, args = heapq.heappop(timers)
                try:
                    callback(*args)
                except Exception as error:  # a timer bug must not stop the others
                    log.error("timer_failed", error=repr(error), exc_info=True)
            if now - last_prune > _FLAP_WINDOW:
                last_prune = now
                self._flaps = {
                    cid: times for cid, times in self._flaps.items() if now - times[-1] < _FLAP_WINDOW
                }
            for conn in self._conns.values():
                # Read deadlines of plain TCP connections (Connection.deadline):
                # one comparison per connection twice a second, instead of a
                # trio deadline change per read.
                if conn.deadline <= now:
                    conn.expire()
            wake = now + _DEADLINE_CHECK
            if timers and timers[0][0] < wake:
                wake = timers[0][0]
            await trio.sleep_until(wake)
