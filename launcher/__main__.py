"""``python -m launcher`` is ``zgrad`` (the console script exists after pip install)."""
import sys

from .cli import main

sys.exit(main())
