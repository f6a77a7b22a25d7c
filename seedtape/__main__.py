from seedtape.cli.main import main

main()
