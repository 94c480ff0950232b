"""The thin layer with side effects: the only code that imports `docker` or `sh`.

Each adapter turns library errors into the project's errors, with context.
"""
