from .services import AttemptCommandService

__all__ = ["AttemptCommandService"]
