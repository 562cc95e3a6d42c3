"""The tutorial's services under `saga-host test-run`: the harness runs them in-process (no
server) from the JSON scripts beside this file. `SAGA_HOST` names the binary (default: the one
on PATH); build the services first with ../build.sh."""

import json
import os
import pathlib
import subprocess
import unittest

HERE = pathlib.Path(__file__).parent
SAGA_HOST = os.environ.get("SAGA_HOST", "saga-host")


def test_run(script):
    done = subprocess.run(
        [SAGA_HOST, "test-run", str(HERE / script)], capture_output=True, text=True, timeout=300
    )
    return done.returncode, json.loads(done.stdout or "null"), done.stderr


class TutorialUnderTheHarness(unittest.TestCase):
    def test_the_pair_runs_the_tutorial_flow(self):
        code, report, stderr = test_run("flow.json")
        self.assertEqual(code, 0, json.dumps(report, indent=2) + stderr)
        self.assertEqual(report["steps"][0]["answer"]["body"]["attempt"], 1)

    def test_the_exam_service_against_stubbed_attempts(self):
        code, report, stderr = test_run("stubbed-attempts.json")
        self.assertEqual(code, 0, json.dumps(report, indent=2) + stderr)
        refused = report["steps"][2]["answer"]["body"]["error"]
        self.assertIn("The maximum number of attempts has been exceeded.", refused)


if __name__ == "__main__":
    unittest.main()
