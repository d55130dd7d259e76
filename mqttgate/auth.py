"""The broker's two narrow questions: who is this client, and what may it do.

The broker asks; an implementation answers. Two implementations exist:
:class:`AnonymousAuth` (``MQTTGATE_ALLOW_ANONYMOUS=true``, development and
conformance testing only) and the device registry's (``mqttgate.credentials``),
backed by PostgreSQL and argon2id.

Authorization is decided once per connection: ``authenticate`` returns an
:class:`Identity` and ``acl_for(identity)`` a compiled :class:`Acl` whose checks
are pure, synchronous and cheap, because they run on every PUBLISH.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from mqttgate.protocol.reasons import ReasonCode


@attrs.frozen
class Identity:
    """Who a connection is, as far as authorization and forwarding care."""

    #: The device's id in the registry; None for anonymous clients.
    device_id: str | None = None
    #: The MQTT user name the device authenticated with.
    mqtt_user: str | None = None
    #: The device type given at provisioning.
    device_type: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.device_id is None


ANONYMOUS = Identity()


class AuthDenied(Exception):
    """Authentication failed; ``reason`` goes into CONNACK (mapped for 3.1.1).

    BAD_USER_NAME_OR_PASSWORD (0x86 / rc 4), NOT_AUTHORIZED (0x87 / rc 5),
    SERVER_UNAVAILABLE (0x88 / rc 3), SERVER_BUSY (0x89 / rc 3).
    """

    def __init__(
        self, reason: ReasonCode, detail: str, *, why: str | None = None, device_id: str | None = None
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        #: Sent to v5 clients as the Reason String: never says whether the
        #: user exists (no user enumeration).
        self.detail = detail
        #: The precise cause for the log (``unknown_user``, ``bad_password``...).
        self.why = why or detail
        #: The device the user name belongs to, when it names one (for the
        #: log only, so ``mqttgate logs --device ID`` finds its denials).
        self.device_id = device_id


class Acl(Protocol):
    """What one authenticated connection may do. Pure and synchronous."""

    def may_publish(self, topic: str) -> bool: ...

    def may_subscribe(self, topic_filter: str) -> bool: ...


class Authenticator(Protocol):
    async def authenticate(
        self, username: str | None, password: bytes | None, *, client_id: str, peer: str
    ) -> Identity:
        """Return the identity, or raise :class:`AuthDenied`."""
        ...

    def acl_for(self, identity: Identity) -> Acl: ...


class AllowAll:
    """The ACL of anonymous mode: everything is allowed."""

    def may_publish(self, topic: str) -> bool:
        return True

    def may_subscribe(self, topic_filter: str) -> bool:
        return True


class AnonymousAuth:
    """Admits every client with no ACL (``MQTTGATE_ALLOW_ANONYMOUS=true``)."""

    async def authenticate(
        self, username: str | None, password: bytes | None, *, client_id: str, peer: str
    ) -> Identity:
        return ANONYMOUS

    def acl_for(self, identity: Identity) -> Acl:
        return AllowAll()


class DenyAll:
    """The authenticator when there is no registry and no anonymous mode."""

    async def authenticate(
        self, username: str | None, password: bytes | None, *, client_id: str, peer: str
    ) -> Identity:
        raise AuthDenied(ReasonCode.NOT_AUTHORIZED, "no device registry configured")

    def acl_for(self, identity: Identity) -> Acl:
        return AllowAll()
