"""The saga builder: the operations the manifest declares, callback names, and saga names."""

import asyncio
import json
import unittest

from saga_host import SagaContext, SagaResponse
from saga_host.sagas import Saga, definitions


def prepare(context):
    return {"user": context["user_uuid"]}


def store(context, response):
    return context


def commit(context):
    return context


def has_key(context):
    return "key" in context


# Module-level names: what definitions() names sagas by.
TUTORIAL = Saga().step().invoke_participant("GetUserAttempts", prepare).on_reply(store).on_error(store).commit(commit)
INNER = Saga().local_step().on_execute(commit).commit()
BRANCHING = (
    Saga(step_timeout=2.5, timeout=60)
    .remote_step()
    .invoke_participant("NotifyStudent")
    .with_compensation("RetractNotification", prepare)
    .conditional_step()
    .if_then(has_key, INNER)
    .if_then(has_key, Saga().local_step().on_execute(commit).on_failure(commit).commit())
    .else_then(Saga().step().invoke_participant("Other").on_success(store).commit())
    .commit()
)


class SagaBuilderTest(unittest.TestCase):
    def test_the_tutorial_saga_records_its_calls_in_order(self):
        self.assertEqual(
            TUTORIAL.operations,
            [
                ("step",),
                ("invoke_participant", "GetUserAttempts", "step1.invoke_participant"),
                ("on_reply", "step1.on_reply"),
                ("on_error", "step1.on_error"),
                ("commit", "commit"),
            ],
        )
        self.assertEqual(
            TUTORIAL.callbacks,
            {
                "step1.invoke_participant": ("prepare", prepare),
                "step1.on_reply": ("reply", store),
                "step1.on_error": ("reply", store),
                "commit": ("execute", commit),
            },
        )

    def test_steps_branches_and_timeouts(self):
        operations = BRANCHING.operations
        self.assertEqual(operations[:5], [
            ("remote_step",),
            ("invoke_participant", "NotifyStudent", None),
            ("with_compensation", "RetractNotification", "step1.with_compensation"),
            ("conditional_step",),
            ("if_then", "step2.if_then1", INNER),
        ])
        self.assertEqual(operations[5][:2], ("if_then", "step2.if_then2"))
        self.assertEqual(operations[6][0], "else_then")
        self.assertEqual(operations[7], ("commit", None))
        self.assertEqual((BRANCHING.step_timeout_ms, BRANCHING.timeout_ms), (2500, 60000))

    def test_sagas_are_named_by_their_module_level_name_and_inline_ones_by_their_branch(self):
        named = definitions()
        self.assertIs(named["TUTORIAL"], TUTORIAL)
        self.assertIs(named["INNER"], INNER)
        self.assertIs(named["BRANCHING"], BRANCHING)
        self.assertIs(named["BRANCHING.step2.if_then2"], BRANCHING.operations[5][2])
        self.assertIs(named["BRANCHING.step2.else_then"], BRANCHING.operations[6][1])

    def test_callbacks_must_be_functions(self):
        with self.assertRaisesRegex(TypeError, "on_reply takes a function"):
            Saga().step().invoke_participant("T").on_reply("store")
        with self.assertRaisesRegex(TypeError, "if_then takes a Saga"):
            Saga().conditional_step().if_then(has_key, "INNER")


class SagaContextTest(unittest.TestCase):
    def test_dict_and_attribute_access(self):
        context = SagaContext(user_uuid="u")
        context.exam_uuid = "e"
        self.assertEqual(context["exam_uuid"], "e")
        self.assertEqual(context.user_uuid, "u")
        self.assertEqual(json.loads(json.dumps(context)), {"user_uuid": "u", "exam_uuid": "e"})
        with self.assertRaisesRegex(AttributeError, "has no 'missing'; it has user_uuid, exam_uuid"):
            context.missing

    def test_a_reply_is_read_as_in_minos(self):
        self.assertEqual(asyncio.run(SagaResponse(200, "3").content()), 3)
        refused = SagaResponse(400, '"The maximum number of attempts has been exceeded."')
        self.assertFalse(refused.ok)
        self.assertEqual(asyncio.run(refused.content()), "The maximum number of attempts has been exceeded.")


if __name__ == "__main__":
    unittest.main()
