"""attempt/src/commands.py, as the tutorial prints it but for the imports and the counting,
which the tutorial leaves out (marked below): each submission counts as an attempt, staged
under the saga, so that the fourth is refused. The reply is the count before this attempt."""

from saga_host import (
    CommandService,
    Condition,
    MinosException,
    Request,
    Response,
    enroute,
)

from ..aggregates import (
    Attempt,
    attempt_uuid,
)

class AttemptCommandService(CommandService):
    """Cart Command Service class"""

    @staticmethod
    @enroute.broker.command("GetUserAttempts")
    async def get_user_attempts(request: Request) -> Response:
        """Create a new cart.
        :param request: A request instance containing the information to build a payment instance.
        :return: A response containing the newly created payment instance.
        """
        content = await request.content()
        user = content["user"]
        exam = content["exam"]

        condition = Condition.AND(
            Condition.EQUAL("user", user),
            Condition.EQUAL("exam", exam),
        )

        async for attempt in Attempt.find(condition, limit=1):
            if (attempt.quantity == 3):
                raise MinosException("The maximum number of attempts has been exceeded.")

            # Not in the tutorial: this attempt counts.
            attempt.quantity += 1
            await attempt.save()
            return Response(attempt.quantity - 1)

        # Not in the tutorial: the first attempt counts.
        await Attempt.create(uuid=attempt_uuid(user, exam), user=user, exam=exam, quantity=1)
        return Response(0)
