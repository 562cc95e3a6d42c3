"""The Exam service of the Minos saga tutorial, as the component componentize-py builds
(world `orchestrator`, see ../build.sh). The tutorial's code is in src/; this module is what
Minos's config.yml says: the service's name, its aggregate and its service classes."""

from saga_host import Microservice
from src.aggregates import Exam
from src.commands import ExamCommandService
from src.queries import ExamQueryService

Service, SagaCallbacks = Microservice(
    "exam", aggregates=[Exam], services=[ExamCommandService, ExamQueryService]
).exports()
