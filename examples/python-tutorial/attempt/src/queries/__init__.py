from .services import AttemptQueryService

__all__ = ["AttemptQueryService"]
