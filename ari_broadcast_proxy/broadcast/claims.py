"""Answering claims, over HTTP and over REST-over-WebSocket alike.

Order as Asterisk: credentials (401/403 from Asterisk itself; 502/504 when Asterisk cannot
be asked), then parameters (400), then the broadcast state (204/404/409, and the proxy's
422). A channel the proxy is not broadcasting is not the proxy's business: the caller
forwards the claim to Asterisk, and a 501 from an Asterisk without res_stasis_broadcast
becomes native's 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from ..ari_request import AriAnswer
from ..auth import AccessDenied, Credentials, WriteAccess
from ..errors import BadRequest, ProxyError
from ..metrics import Metrics
from .claim_params import CLAIM_CONFLICT, CLAIM_NOT_FOUND, CLAIM_NOT_OFFERED, claim_params
from .controller import BroadcastController
from .core import ClaimOutcome

__all__ = ["ClaimService", "native_404_for_501"]

log = logging.getLogger(__name__)

_MESSAGES = {
    ClaimOutcome.NOT_FOUND: CLAIM_NOT_FOUND,
    ClaimOutcome.CONFLICT: CLAIM_CONFLICT,
    ClaimOutcome.NOT_OFFERED: CLAIM_NOT_OFFERED,
}


class ClaimService:
    def __init__(
        self, controller: BroadcastController, access: WriteAccess, metrics: Metrics
    ) -> None:
        self._controller = controller
        self._access = access
        self._metrics = metrics

    async def answer(
        self,
        credentials: Credentials,
        params: Iterable[tuple[str, str]],
        json_body: Any | None,
    ) -> AriAnswer | None:
        """The proxy's answer, or None when Asterisk must answer (not our broadcast)."""
        answer = await self._answer(credentials, params, json_body)
        if answer is None:
            self._metrics.claims.labels("forwarded").inc()
            return None
        return self._counted(answer)

    async def _answer(
        self,
        credentials: Credentials,
        params: Iterable[tuple[str, str]],
        json_body: Any | None,
    ) -> AriAnswer | None:
        if (refusal := await self.write_refusal(credentials)) is not None:
            return refusal
        try:
            claim = claim_params(params, json_body)
        except BadRequest as exc:
            return AriAnswer(400, {"message": exc.message})
        outcome = await self._controller.claim(claim.channel_id, claim.application)
        return None if outcome is None else _answer_for(outcome)

    def answer_at_once(
        self,
        credentials: Credentials,
        params: Iterable[tuple[str, str]],
        reply: Callable[[AriAnswer], None],
    ) -> bool:
        """Answer a claim with no body as it is read, through `reply`: at once, or for the
        winner once its hand-over is written (a task the executor owns). False: `answer`
        must take it (credentials Asterisk has not accepted lately, replicas, a channel that
        is not the proxy's)."""
        if not self._access.granted(credentials):
            return False
        try:
            claim = claim_params(params)
        except BadRequest as exc:
            self._metrics.claims_at_once.inc()
            reply(self._counted(AriAnswer(400, {"message": exc.message})))
            return True
        decided = self._controller.claim_at_once(claim.channel_id, claim.application)
        if decided is None:
            return False
        self._metrics.claims_at_once.inc()
        if isinstance(decided, ClaimOutcome):
            reply(self._counted(_answer_for(decided)))
        else:
            name = f"claim-{claim.channel_id}"
            self._controller.executor.spawn(self._reply_when(decided, reply), name, eager=True)
        return True

    async def _reply_when(
        self, settled: Awaitable[ClaimOutcome], reply: Callable[[AriAnswer], None]
    ) -> None:
        try:
            outcome = await settled
        except asyncio.CancelledError:  # shutting down with the hand-over still unwritten
            reply(self._counted(AriAnswer(503, {"message": "The proxy is shutting down"})))
            raise
        except Exception:
            log.exception("a winning claim could not be carried out")
            reply(self._counted(AriAnswer(500, {"message": "Internal Server Error"})))
            return
        reply(self._counted(_answer_for(outcome)))

    def _counted(self, answer: AriAnswer) -> AriAnswer:
        self._metrics.claims.labels(str(answer.status)).inc()
        return answer

    async def write_refusal(self, credentials: Credentials) -> AriAnswer | None:
        """Asterisk's refusal of these credentials for writing (401/403; 502/504 when it
        cannot be asked), or None when they may write."""
        try:
            await self._access.require(credentials)
        except AccessDenied as denied:
            response = denied.response
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text}
            challenge = response.header("www-authenticate")
            headers = {"www-authenticate": challenge} if challenge is not None else {}
            return AriAnswer(response.status_code, body, headers)
        except ProxyError as exc:  # Asterisk could not be asked (unreachable, too slow)
            log.warning("refused a write: checking the credentials failed: %s", exc.message)
            return AriAnswer(exc.status, {"message": exc.message})
        return None


def _answer_for(outcome: ClaimOutcome) -> AriAnswer:
    if outcome is ClaimOutcome.WON:
        return AriAnswer(204)
    return AriAnswer(outcome.value, {"message": _MESSAGES[outcome]})


def native_404_for_501(status: int, body: bytes) -> tuple[int, bytes]:
    """Asterisk without res_stasis_broadcast answers 501; native would say 404."""
    if status == 501:
        return 404, orjson.dumps({"message": CLAIM_NOT_FOUND})
    return status, body
