"""zgrad's command line (``zgrad run config.yaml``, ``python -m launcher``): a later issue.

The launcher talks to workers only through environment variables, the config file and exit
codes, like torchrun (see ARCHITECTURE.md).
"""
