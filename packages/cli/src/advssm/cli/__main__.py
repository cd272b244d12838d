"""``python -m advssm.cli``: the same as the ``advssm`` command."""
from .main import main

main()
