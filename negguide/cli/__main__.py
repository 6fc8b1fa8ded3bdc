"""``python -m negguide.cli`` (and ``accelerate launch -m negguide.cli``) runs the ``negguide`` command line."""

from negguide.cli import main

raise SystemExit(main())
