"""``python -m dgm``: the command line, also as torchrun starts it (``torchrun ... -m dgm train ...``)."""
from dgm.cli import main

raise SystemExit(main())
