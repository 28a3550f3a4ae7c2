from tunefleet.cli import main

main()
