"""The Attempt microservice of the Minos saga tutorial."""
