"""`python -m dagster_project.cli`: the same command line as the `streamfit` script."""

from dagster_project.cli import main

if __name__ == "__main__":
    main()
