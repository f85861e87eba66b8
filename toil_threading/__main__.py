"""`python -m toil_threading`: the toil-threading command."""

from toil_threading._cli import main

raise SystemExit(main())
