"""`tiforge web`: a small FastAPI app that configures, runs and shows trainings in the browser."""
