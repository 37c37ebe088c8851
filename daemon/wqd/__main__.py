from wqd.cli import main

main()
