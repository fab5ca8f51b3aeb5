from tissuemap.cli import main

main()
