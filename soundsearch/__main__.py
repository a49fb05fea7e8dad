from soundsearch.cli import main

main()
