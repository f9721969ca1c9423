"""The routes' one way into the batcher: admit the request, tied to its connection and its access-log line.

    async with admit(request, services, facts) as ticket:
        outcome = await ticket.run(Op.ENCODE, inputs)

Admission happens before the body is read (a full queue answers 429 at once); while the results are awaited the
batcher watches the connection, so a client that leaves stops its request before compute.
"""

from __future__ import annotations

from starlette.requests import Request

from ..batching import Ticket
from ..facts import ModelFacts
from ..runtime import Services


def admit(request: Request, services: Services, facts: ModelFacts) -> Ticket:
    """A ticket for `facts`' model (503 draining, 429 full); the access log reads its batch size."""

    async def disconnected() -> None:
        # the body has been read by the time results are awaited, so the next message is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass

    ticket = services.batcher.admit(facts.name, disconnected)
    request.state.ticket = ticket
    return ticket
