from otrules.cli import main

main()
