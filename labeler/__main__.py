import sys

from labeler.service.cli import main

sys.exit(main())
