from uqflow.cli import main

main()
