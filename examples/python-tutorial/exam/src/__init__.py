"""The Exam microservice of the Minos saga tutorial."""
