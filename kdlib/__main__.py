import sys

from kdlib._cli import main

sys.exit(main())
