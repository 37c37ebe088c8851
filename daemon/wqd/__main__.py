from wqd.cli.main import main

main()
