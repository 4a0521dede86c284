from leakcheck.cli import main

main()
