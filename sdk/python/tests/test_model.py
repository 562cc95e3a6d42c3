"""Typed fields, ModelType, refs, JSON encoding, and driving coroutines without an event loop."""

from __future__ import annotations

import asyncio
import json
import unittest
from typing import Optional
from uuid import UUID

from saga_host import AggregateRef, InvalidFieldException, MissingFieldException, ModelRef, ModelType, SystemException
from saga_host.aggregates import Aggregate
from saga_host.encoding import to_json
from saga_host.microservice import complete
from saga_host.requests import Request, Response

U = "7f1f3b4e-4c39-4fd2-9d0c-2f5b0c8f6a11"


class Attempt(Aggregate, indexes=["user"]):
    user: ModelRef[User]
    quantity: int = 0
    note: Optional[str]
    tags: list[str] = []


class User(AggregateRef):
    name: str


class ModelTest(unittest.TestCase):
    def test_values_are_converted_to_their_field_types(self):
        attempt = Attempt(user=U, quantity=2)
        self.assertEqual(attempt.user, UUID(U))
        self.assertIsNone(attempt.note)
        self.assertEqual(attempt.tags, [])
        self.assertEqual(Attempt.aggregate_name, "Attempt")
        self.assertEqual(Attempt.indexes, ("user",))
        self.assertEqual(list(Attempt.fields()), ["user", "quantity", "note", "tags"])
        attempt.user = User(uuid=UUID(int=7), name="Ada")
        self.assertEqual(attempt.user, UUID(int=7), "a ref keeps the uuid")

    def test_a_value_that_does_not_fit_names_the_field(self):
        with self.assertRaisesRegex(InvalidFieldException, r"Attempt.user: 'x' is not a UUID"):
            Attempt(user="x")
        with self.assertRaisesRegex(InvalidFieldException, r"Attempt.quantity: True is not a int"):
            Attempt(user=U, quantity=True)
        with self.assertRaisesRegex(InvalidFieldException, r"Attempt.tags\[1\]: 3 is not a str"):
            Attempt(user=U, tags=["a", 3])
        with self.assertRaisesRegex(InvalidFieldException, "Attempt.user is required"):
            Attempt(quantity=1)
        with self.assertRaisesRegex(TypeError, "no field 'qty'"):
            Attempt(user=U, qty=1)
        with self.assertRaisesRegex(AttributeError, "kept by the host"):
            Attempt(user=U).version = 3

    def test_model_type_build_as_in_the_tutorial(self):
        AttemptQuery = ModelType.build("AttemptQuery", {"user": UUID, "exam": UUID})
        query = AttemptQuery(U, UUID(int=2))
        self.assertEqual(query.user, UUID(U))
        self.assertEqual(dict(query), {"user": UUID(U), "exam": UUID(int=2)})
        self.assertEqual(json.loads(to_json(query, "q")), {"user": U, "exam": str(UUID(int=2))})

    def test_an_aggregate_is_written_flat_with_its_metadata(self):
        attempt = Attempt(user=U, uuid=UUID(int=1))
        self.assertEqual(
            json.loads(to_json({"attempt": attempt}, "context")),
            {"attempt": {"uuid": str(UUID(int=1)), "version": 0, "created_at": None, "updated_at": None,
                         "user": U, "quantity": 0, "note": None, "tags": []}},
        )

    def test_what_is_not_json_is_refused_naming_whose_it_is(self):
        with self.assertRaisesRegex(SystemException, "the response of handler X.y cannot be sent as JSON: a object"):
            to_json({"a": object()}, "the response of handler X.y")


class RequestTest(unittest.TestCase):
    def test_a_missing_field_is_the_clients_mistake(self):
        request = Request(handler="h", payload='{"user": "u"}', params={}, query={}, headers={}, user=None)
        content = asyncio.run(request.content())
        self.assertEqual(content["user"], "u")
        with self.assertRaises(MissingFieldException) as refused:
            content["exam"]
        self.assertEqual((refused.exception.status, str(refused.exception)), (400, "the request has no field 'exam'"))
        self.assertIsInstance(refused.exception, KeyError)

    def test_a_response_is_a_success(self):
        with self.assertRaisesRegex(ValueError, "raise ResponseException"):
            Response({}, status=404)


class CompleteTest(unittest.TestCase):
    def test_coroutines_run_to_completion_without_an_event_loop(self):
        async def inner():
            return 41

        async def handler():
            return await inner() + 1

        self.assertEqual(complete(handler(), "handler h"), 42)
        self.assertEqual(complete(7, "handler h"), 7)

    def test_a_coroutine_that_really_waits_is_refused(self):
        async def sleeper():
            await asyncio.sleep(0)  # yields to an event loop there is none of

        with self.assertRaisesRegex(SystemException, "handler h awaited something that waits for an event loop"):
            complete(sleeper(), "handler h")


if __name__ == "__main__":
    unittest.main()
