"""The HTTP service: Ray Serve app, jobs API, job store."""
