"""`python -m cnnlab` runs the command line (also what `torchrun -m cnnlab` starts)."""

from cnnlab.cli import main

raise SystemExit(main())
