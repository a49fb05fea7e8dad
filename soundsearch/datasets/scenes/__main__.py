import sys

from soundsearch.datasets.scenes.command import main

sys.exit(main())
