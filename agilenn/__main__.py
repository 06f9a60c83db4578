"""``python -m agilenn <command>``: the same as the ``agilenn`` launcher."""

from agilenn.cli import main

raise SystemExit(main())
