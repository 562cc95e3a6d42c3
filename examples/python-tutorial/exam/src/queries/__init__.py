from .services import ExamQueryService

__all__ = ["ExamQueryService"]
