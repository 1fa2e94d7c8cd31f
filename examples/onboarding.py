"""A durable workflow: the steps of onboarding a user, each a call run and retried by
the scheduler, the whole remembered across crashes, retries and redeploys.

dispatchlet dev examples/onboarding.py onboard '"ada@example.com"'   # one run, end to end
"""

from __future__ import annotations

from datetime import timedelta

from dispatchlet import Endpoint, PermanentError, gather, sleep

endpoint = Endpoint()

# Steps do the I/O: each is retried on its own, and its result is remembered once it
# returns. The dispatch id is the key that makes a retried side effect happen once.


@endpoint.function
def create_user(email: str) -> dict[str, str]:
    if "@" not in email:
        raise PermanentError(f"not an email address: {email!r}")
    # The email is the key: a retried attempt finds the user made by an earlier one.
    return {"id": f"user-{email.split('@')[0]}", "email": email}


@endpoint.function
def send_email(to: str, template: str) -> str:
    return f"{template} sent to {to}"


@endpoint.function
def notify_sales(user_id: str) -> str:
    return f"sales told of {user_id}"


# The workflow only decides: it runs again from its start on every resume, each await
# of a step that is done returning the remembered result at once. Calling a registered
# function in a workflow makes the durable call; `.step(...)` is the same, typed for
# `await` (mypy sees a plain function's call as returning its result, not an awaitable).


@endpoint.function
async def onboard(email: str) -> dict[str, object]:
    user = await create_user.step(email)
    sent = await send_email.step(user["email"], "welcome")
    await sleep(timedelta(seconds=1))  # a durable timer: days work the same way
    tips, sales = await gather(
        send_email.step(user["email"], "tips"), notify_sales.step(user["id"])
    )
    return {"user": user["id"], "done": [sent, tips, sales]}
