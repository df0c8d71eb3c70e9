"""zgrad's command line: ``zgrad run config.yaml`` / ``python -m launcher`` (zgrad's torchrun).

The launcher talks to workers only through environment variables, the config file and exit
codes, like torchrun (see ARCHITECTURE.md): ``cli`` parses, ``cluster`` finds the job's shape
(flags or a scheduler), ``env`` builds each worker's environment, ``supervisor`` runs and
stops the workers, ``job`` ties a run together, ``tools`` holds env/plot/profile.
"""
