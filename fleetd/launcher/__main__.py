import sys

from fleetd.launcher.cli import main

sys.exit(main())
