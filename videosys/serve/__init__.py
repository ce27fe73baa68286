"""`videosys serve`: a generation service (FastAPI) with a web page, over one loaded engine."""
