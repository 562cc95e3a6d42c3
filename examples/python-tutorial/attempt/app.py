"""The Attempt service of the Minos saga tutorial, as the component componentize-py builds
(world `participant`, see ../build.sh). The tutorial's code is in src/; this module is what
Minos's config.yml says: the service's name, its aggregate and its service classes."""

from saga_host import Microservice
from src.aggregates import Attempt
from src.commands import AttemptCommandService
from src.queries import AttemptQueryService

Service, SagaCallbacks = Microservice(
    "attempt", aggregates=[Attempt], services=[AttemptCommandService, AttemptQueryService]
).exports()
