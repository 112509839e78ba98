"""Credentials that can be read again from their source when AWS says they expired.

botocore refreshes temporary credentials on its own only ahead of the expiry time they announce.
A long-lived process also sees credentials stop working before that (a key rotated by a sidecar
into a credentials file, a revoked session, a pod role's token replaced): AWS answers
``ExpiredToken``, ``InvalidClientTokenId`` ... (``rdsrecorder.retry``, ``Decision.REFRESH``), and
the call can only succeed with credentials loaded anew.

``RefreshingCredentials`` is the credentials object of a session and of every client made from
it (each request is signed with ``get_frozen_credentials()``, the public method aiobotocore's
signer calls): it hands out what its loader last returned, and ``refresh`` runs the loader again.
The loader is the whole default chain read by a new botocore session (env, files, container and
instance roles, web identity), or an STS AssumeRole; what it returns keeps its own renewal ahead
of expiry. The session gets it through the public component API
(``register_component("credential_provider", ...)``): no client is rebuilt, so a call in flight
and the S3 event handlers stay as they are."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aioboto3
from aiobotocore.credentials import AioCredentialResolver, AioCredentials
from aiobotocore.session import AioSession
from botocore.credentials import CredentialProvider
from botocore.exceptions import BotoCoreError, ClientError

from rdsrecorder.errors import RdsRecorderError

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[Any]]  # botocore credentials, or None when there are none


async def default_chain() -> Any:
    """The default credential chain, read from scratch by a new botocore session."""
    return await AioSession().get_credentials()


class RefreshingCredentials(AioCredentials):  # type: ignore[misc]  # untyped base
    """See the module doc. ``generation`` counts refreshes: a call that failed with the
    credentials of generation g asks for a refresh of g, so that many calls failing at once cost
    one reload."""

    def __init__(self, inner: Any, frozen: Any, loader: Loader, name: str) -> None:
        super().__init__(frozen.access_key, frozen.secret_key, frozen.token, method=name)
        self._inner = inner
        self._loader = loader
        self._lock = asyncio.Lock()
        self.name = name
        self.generation = 0

    @classmethod
    async def load(cls, loader: Loader, name: str) -> RefreshingCredentials | None:
        inner = await loader()
        if inner is None:
            return None
        return cls(inner, await inner.get_frozen_credentials(), loader, name)

    async def get_frozen_credentials(self) -> Any:
        frozen = await self._inner.get_frozen_credentials()
        self.access_key, self.secret_key, self.token = (
            frozen.access_key,
            frozen.secret_key,
            frozen.token,
        )
        return frozen

    async def refresh(self, seen_generation: int) -> bool:
        """Load the credentials again, unless that was done since ``seen_generation``. False
        when the source gave nothing usable (the old credentials stay)."""
        async with self._lock:
            if self.generation != seen_generation:
                return True
            try:
                inner = await self._loader()
                if inner is not None:
                    await inner.get_frozen_credentials()
            except (BotoCoreError, ClientError, RdsRecorderError, OSError) as exc:
                log.warning("%s: cannot load new credentials: %s", self.name, exc)
                return False
            if inner is None:
                log.warning("%s: cannot load new credentials: none found", self.name)
                return False
            self._inner = inner
            self.generation += 1
            log.info("%s: AWS said the credentials expired or are invalid: loaded anew", self.name)
            return True


class _Provider(CredentialProvider):  # type: ignore[misc]  # untyped base
    METHOD = "rdsrecorder-refreshing"
    CANONICAL_NAME = "custom-rdsrecorder-refreshing"

    def __init__(self, loader: Loader, name: str) -> None:
        super().__init__()
        self._loader = loader
        self._name = name

    async def load(self) -> RefreshingCredentials | None:
        return await RefreshingCredentials.load(self._loader, self._name)


def refreshing_session(loader: Loader, name: str) -> aioboto3.Session:
    """An aioboto3 session whose credentials are ``RefreshingCredentials`` over ``loader``
    (loaded when the first client is made, as botocore does)."""
    core = AioSession()
    core.register_component("credential_provider", AioCredentialResolver([_Provider(loader, name)]))
    return aioboto3.Session(botocore_session=core)


async def credentials_of(session: aioboto3.Session) -> RefreshingCredentials | None:
    creds = await session.get_credentials()
    return creds if isinstance(creds, RefreshingCredentials) else None
