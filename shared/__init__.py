"""What both services share: configuration, HTTP plumbing, versions and history, imports, alerts.

Nothing here knows about patients or therapists; each service brings its own models,
schemas and service functions and plugs them into these mechanisms.
"""
