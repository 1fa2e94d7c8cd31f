"""A durable workflow: the steps of onboarding a user, each a call run and retried by
the scheduler, the whole remembered across crashes, retries and redeploys.

dispatchlet dev examples/onboarding.py onboard '"ada@example.com"'   # one run, end to end
"""

from __future__ import annotations

from datetime import timedelta

from dispatchlet import Endpoint, PermanentError, RunContext, gather, sleep

endpoint = Endpoint()

# Steps do the I/O: each is retried on its own, and its result is remembered once it
# returns. The dispatch id is the key that makes a retried side effect happen once.


@endpoint.function
def create_user(email: str, context: RunContext) -> dict[str, str]:
    if "@" not in email:
        raise PermanentError(f"not an email address: {email!r}")
    return {"id": f"user-{context.dispatch_id[:8]}", "email": email}


@endpoint.function
def send_email(to: str, template: str) -> str:
    return f"{template} sent to {to}"


@endpoint.function
def notify_sales(user_id: str) -> str:
    return f"sales told of {user_id}"


# The workflow only decides: it runs again from its start on every resume, each await
# of a step that is done returning the remembered result at once.


@endpoint.function
async def onboard(email: str) -> dict[str, object]:
    user = await create_user(email)
    sent = await send_email(user["email"], "welcome")
    await sleep(timedelta(seconds=1))  # a durable timer: days work the same way
    tips, sales = await gather(send_email(user["email"], "tips"), notify_sales(user["id"]))
    return {"user": user["id"], "done": [sent, tips, sales]}
