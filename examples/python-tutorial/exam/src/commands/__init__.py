from .services import ExamCommandService

__all__ = ["ExamCommandService"]
