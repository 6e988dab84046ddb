from gatebench.cli import main

main()
