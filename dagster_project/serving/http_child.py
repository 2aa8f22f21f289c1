"""`python -m dagster_project.serving.http_child`: one HTTP process of `serve --http-processes N`.

Its own module, not `http_processes` run as `__main__`: the package imports that one already, and
running an imported module as the main one gives two copies of it.
"""

from dagster_project.serving.http_processes import serve_child

if __name__ == "__main__":
    serve_child()
